//! Task loading: every GLUE preset on the shipped files (exact row counts and field
//! values), QNLI's dev-only folder in the shared datasets, a quoted custom CSV task, the
//! missing-file and bad-row errors, and the GLUE submission format.

use std::path::{Path, PathBuf};

use bertline::config::FinetuneConfig;
use bertline::metrics::{Metric, Targets};
use bertline::tasks::{
    glue_preset, resolve_task, split_quoted_rows, write_glue_submission, Example, Label,
    Prediction, TaskKind, TaskSpec,
};

fn glue_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/glue")
}

/// `../shared/datasets` next to the repository (CI), else the machine-wide copy.
fn shared_glue_dir() -> PathBuf {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/glue");
    let candidates = [beside, PathBuf::from("/work/shared/datasets/glue")];
    candidates
        .into_iter()
        .find(|p| p.is_dir())
        .expect("the shared datasets (../shared/datasets) are needed by this test")
}

fn preset(name: &str) -> TaskSpec {
    glue_preset(name, &glue_dir()).unwrap()
}

fn load_all(task: &TaskSpec) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    task.check_files().unwrap();
    let train = task.load_train().unwrap();
    let dev = task.load(&task.dev[0].table).unwrap();
    let test = task.load(&task.test[0].table).unwrap();
    (train, dev, test)
}

#[test]
fn cola_rows_and_fields() {
    let task = preset("CoLA");
    assert_eq!(task.metrics, vec![Metric::Mcc]);
    let (train, dev, test) = load_all(&task);
    assert_eq!((train.len(), dev.len(), test.len()), (8551, 1043, 1063));
    assert_eq!(
        train[0].text_a,
        "Our friends won't buy this analysis, let alone the next one we propose."
    );
    assert_eq!(train[0].label, Some(Label::Class(1)));
    assert_eq!(train[8550].text_a, "What all did you get for Christmas?");
    assert_eq!(dev[1042].text_a, "John talked to Bill about himself.");
    assert_eq!(dev[1042].line, 1043);
    let positives = train
        .iter()
        .filter(|e| e.label == Some(Label::Class(1)))
        .count();
    // CoLA's train set is about 70% acceptable.
    assert!((5900..6100).contains(&positives), "{positives}");
    assert_eq!(test[1062].id, "1062");
    assert_eq!(test[1062].text_a, "A picture of himself frightened John.");
    assert_eq!(test[0].label, None);
}

#[test]
fn sst2_rows_and_fields() {
    let task = preset("sst-2");
    assert_eq!(task.name, "sst2");
    let (train, dev, test) = load_all(&task);
    assert_eq!((train.len(), dev.len(), test.len()), (67349, 872, 1821));
    assert_eq!(
        train[0].text_a,
        "hide new secretions from the parental units "
    );
    assert_eq!(train[0].label, Some(Label::Class(0)));
    assert_eq!(
        dev[0].text_a,
        "it 's a charming and often affecting journey . "
    );
    assert_eq!(dev[0].label, Some(Label::Class(1)));
    assert_eq!(dev[0].text_b, None);
    assert_eq!(test[0].id, "0");
    assert_eq!(test[0].text_a, "uneasy mishmash of styles and genres .");
}

#[test]
fn mrpc_keeps_stray_quotes_and_reads_past_the_bom() {
    let task = preset("mrpc");
    assert_eq!(task.metrics, vec![Metric::F1, Metric::Accuracy]);
    let (train, dev, test) = load_all(&task);
    assert_eq!((train.len(), dev.len(), test.len()), (3668, 408, 1725));
    assert_eq!(
        train[0].text_a,
        "Amrozi accused his brother , whom he called \" the witness \" , of deliberately \
         distorting his evidence ."
    );
    assert_eq!(
        train[0].text_b.as_deref(),
        Some(
            "Referring to him as only \" the witness \" , Amrozi accused his brother of \
             deliberately distorting his evidence ."
        )
    );
    assert_eq!(train[0].label, Some(Label::Class(1)));
    assert_eq!(train[1].label, Some(Label::Class(0)));
    assert!(dev[0]
        .text_b
        .as_deref()
        .unwrap()
        .starts_with("\" The foodservice pie business"));
    assert!(test[0]
        .text_a
        .starts_with("PCCW 's chief operating officer"));
}

#[test]
fn stsb_is_a_regression_on_columns_7_8_9() {
    let task = preset("STS-B");
    assert_eq!(task.kind, TaskKind::Regression);
    assert_eq!(task.metrics, vec![Metric::Spearman, Metric::Pearson]);
    let (train, dev, test) = load_all(&task);
    assert_eq!((train.len(), dev.len(), test.len()), (5749, 1500, 1379));
    assert_eq!(dev[0].text_a, "A man with a hard hat is dancing.");
    assert_eq!(
        dev[0].text_b.as_deref(),
        Some("A man wearing a hard hat is dancing.")
    );
    assert_eq!(dev[0].label, Some(Label::Score(5.0)));
    assert_eq!(train[1].label, Some(Label::Score(3.8)));
    assert_eq!(dev[1499].label, Some(Label::Score(0.0)));
    let Targets::Scores(scores) = task.gold(&dev, &task.dev[0].table.path).unwrap() else {
        panic!("regression gold must be scores")
    };
    assert!(scores.iter().all(|s| (0.0..=5.0).contains(s)));
    assert_eq!(test[1378].id, "1378");
    assert_eq!(
        test[1378].text_b.as_deref(),
        Some("North Korea Delegation Meets With South Korean Officials")
    );
}

#[test]
fn wnli_rows_and_fields() {
    let task = preset("wnli");
    let (train, dev, test) = load_all(&task);
    assert_eq!((train.len(), dev.len(), test.len()), (635, 71, 146));
    assert_eq!(
        train[0].text_a,
        "I stuck a pin through a carrot. When I pulled the pin out, it had a hole."
    );
    assert_eq!(train[0].text_b.as_deref(), Some("The carrot had a hole."));
    assert_eq!(dev[70].label, Some(Label::Class(0)));
    assert_eq!(
        dev[70].text_b.as_deref(),
        Some("Eric was not particularly eager to see it.")
    );
}

#[test]
fn qnli_dev_loads_but_missing_train_is_an_error_naming_the_file() {
    let task = glue_preset("qnli", &shared_glue_dir()).unwrap();
    let dev = task.load(&task.dev[0].table).unwrap();
    assert_eq!(dev.len(), 5463);
    assert_eq!(
        dev[0].text_a,
        "What came into force after the new constitution was herald?"
    );
    assert_eq!(dev[0].label, Some(Label::Class(0)));
    assert_eq!(dev[1].label, Some(Label::Class(1)));
    assert_eq!(task.load(&task.test[0].table).unwrap().len(), 5463);
    let err = task.check_files().unwrap_err().to_string();
    assert!(
        err.contains("QNLI/train.tsv") && err.contains("`qnli`"),
        "{err}"
    );
}

#[test]
fn missing_glue_task_fails_naming_the_file() {
    for (name, file) in [
        ("mnli", "MNLI/train.tsv"),
        ("qqp", "QQP/train.tsv"),
        ("rte", "RTE/train.tsv"),
    ] {
        let task = preset(name);
        let err = task.load_train().unwrap_err().to_string();
        assert!(err.contains(file), "{err}");
        assert!(err.contains("not found"), "{err}");
        assert!(task.check_files().is_err());
    }
    let mnli = preset("MNLI");
    let dev: Vec<&str> = mnli.dev.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(dev, ["dev_matched", "dev_mismatched"]);
    let files: Vec<&str> = mnli
        .test
        .iter()
        .map(|t| t.submission_file.as_deref().unwrap())
        .collect();
    assert_eq!(files, ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]);
}

#[test]
fn quoted_rows_follow_rfc4180() {
    let text = "a,b\n\"x, y\",\"he said \"\"hi\"\"\"\n\nplain \"q\",\"two\nlines\"\r\nlast,\n";
    let rows = split_quoted_rows(text, ',').unwrap();
    let expect: Vec<(usize, Vec<String>)> = vec![
        (1, vec!["a".into(), "b".into()]),
        (2, vec!["x, y".into(), "he said \"hi\"".into()]),
        (4, vec!["plain \"q\"".into(), "two\nlines".into()]),
        (6, vec!["last".into(), "".into()]),
    ];
    assert_eq!(rows, expect);
    assert_eq!(
        split_quoted_rows("a,\"open\nb", ','),
        Err((1, "unterminated quoted field".into()))
    );
    assert!(split_quoted_rows("\"x\"y,z", ',')
        .unwrap_err()
        .1
        .contains("after a closing quote"));
}

fn custom_config(dir: &Path, extra: &str) -> FinetuneConfig {
    let toml = format!(
        r#"
        [custom.reviews]
        train = "train.csv"
        dev = "{}"
        test = "test.csv"
        delimiter = ","
        quoting = true
        text_a = "review"
        text_b = "title"
        label = "sentiment"
        labels = ["neg", "pos"]
        metrics = ["accuracy", "f1"]
        {extra}
        "#,
        dir.join("dev.csv").display()
    );
    toml::from_str(&toml).unwrap()
}

#[test]
fn custom_csv_task_with_quotes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("train.csv"),
        "id,title,review,sentiment\n\
         1,\"Great, really\",\"I said \"\"wow\"\", twice\",pos\n\
         2,Meh,\"Long\nand dull\",neg\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dev.csv"),
        "id,title,review,sentiment\n3,A,B,pos\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("test.csv"), "id,title,review\n4,C,D\n").unwrap();
    let config = custom_config(dir.path(), "");
    let task = resolve_task("reviews", &config, &glue_dir(), dir.path()).unwrap();
    assert_eq!(task.metrics, vec![Metric::Accuracy, Metric::F1]);
    assert_eq!(task.kind.num_labels(), 2);
    let train = task.load_train().unwrap();
    assert_eq!(train.len(), 2);
    assert_eq!(train[0].text_a, "I said \"wow\", twice");
    assert_eq!(train[0].text_b.as_deref(), Some("Great, really"));
    assert_eq!(train[0].label, Some(Label::Class(1)));
    assert_eq!(train[1].text_a, "Long\nand dull");
    assert_eq!(train[1].label, Some(Label::Class(0)));
    assert_eq!(train[1].line, 3);
    let dev = task.load(&task.dev[0].table).unwrap();
    assert_eq!(dev[0].label, Some(Label::Class(1)));
    let test = task.load(&task.test[0].table).unwrap();
    assert_eq!((test[0].text_a.as_str(), test[0].label), ("D", None));
    assert_eq!(task.test[0].submission_file.as_deref(), Some("reviews.tsv"));
}

#[test]
fn bad_rows_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = custom_config(dir.path(), "");
    let task = resolve_task("reviews", &config, &glue_dir(), dir.path()).unwrap();
    let train = dir.path().join("train.csv");
    std::fs::write(&train, "id,title,review,sentiment\n1,a,b,pos\n2,a,b\n").unwrap();
    let err = task.load_train().unwrap_err().to_string();
    assert!(err.contains("train.csv") && err.contains("line 3"), "{err}");
    assert!(err.contains("3 columns, expected 4"), "{err}");
    std::fs::write(
        &train,
        "id,title,review,sentiment\n1,a,b,pos\n\n2,a,b,neutral\n",
    )
    .unwrap();
    let err = task.load_train().unwrap_err().to_string();
    assert!(
        err.contains("line 4") && err.contains("unknown label `neutral`"),
        "{err}"
    );
    std::fs::write(&train, "id,title,text,sentiment\n").unwrap();
    let err = task.load_train().unwrap_err().to_string();
    assert!(err.contains("no column named `review`"), "{err}");
}

#[test]
fn unknown_task_and_bad_custom_metric_are_config_errors() {
    let config = FinetuneConfig::default();
    let err = resolve_task("glue-x", &config, &glue_dir(), Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown task `glue-x`") && err.contains("cola"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = custom_config(dir.path(), "");
    config.custom.get_mut("reviews").unwrap().metrics = vec!["auc".into()];
    let err = resolve_task("reviews", &config, &glue_dir(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown metric `auc`"), "{err}");
    let mut config = custom_config(dir.path(), "");
    let reviews = config.custom.get_mut("reviews").unwrap();
    reviews.labels.clear();
    let err = resolve_task("reviews", &config, &glue_dir(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("regression"), "{err}");
}

#[test]
fn glue_submission_files_use_index_and_label_names() {
    let out = tempfile::tempdir().unwrap();
    let cola = preset("cola");
    let test = cola.load(&cola.test[0].table).unwrap();
    let predictions: Vec<Prediction> = (0..test.len()).map(|i| Prediction::Class(i % 2)).collect();
    let path =
        write_glue_submission(out.path(), &cola, &cola.test[0], &test, &predictions).unwrap();
    assert_eq!(path.file_name().unwrap(), "CoLA.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("index\tprediction\n0\t0\n1\t1\n2\t0\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1 + 1063);

    let stsb = preset("stsb");
    let test = stsb.load(&stsb.test[0].table).unwrap();
    let mut scores = vec![Prediction::Score(2.0); test.len()];
    scores[0] = Prediction::Score(5.7);
    scores[1] = Prediction::Score(-0.2);
    scores[2] = Prediction::Score(3.2468);
    let path = write_glue_submission(out.path(), &stsb, &stsb.test[0], &test, &scores).unwrap();
    assert_eq!(path.file_name().unwrap(), "STS-B.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("index\tprediction\n0\t5.000\n1\t0.000\n2\t3.247\n3\t2.000\n"),
        "{text}"
    );

    let qnli = glue_preset("qnli", &shared_glue_dir()).unwrap();
    let rows = qnli.load(&qnli.test[0].table).unwrap();
    let predictions = vec![Prediction::Class(1); rows.len()];
    let path =
        write_glue_submission(out.path(), &qnli, &qnli.test[0], &rows, &predictions).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("index\tprediction\n0\tnot_entailment\n"),
        "{text}"
    );

    let err = write_glue_submission(out.path(), &cola, &cola.test[0], &rows[..2], &[]).unwrap_err();
    assert!(
        err.to_string().contains("0 predictions for 2 test rows"),
        "{err}"
    );
}
