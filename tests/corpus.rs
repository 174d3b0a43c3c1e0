//! Corpus validation: each bad input gets a one-line error naming the file and the fix.

use bertline::corpus::{documents, read_corpus};

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn documents_split_on_blank_lines() {
    let docs = documents("A one.\nA two.\n\n\nB one.\n  \nC one.\nC two.\n");
    assert_eq!(
        docs,
        vec![
            vec!["A one.", "A two."],
            vec!["B one."],
            vec!["C one.", "C two."]
        ]
    );
}

#[test]
fn shipped_text_reads() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/pretrain/wiki_00.txt");
    let text = read_corpus(&p).unwrap();
    let docs = documents(&text);
    assert!(docs.len() > 300, "{}", docs.len());
}

#[test]
fn bad_inputs_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty.txt", b"\n\n  \n", "empty corpus file"),
        (
            "latin1.txt",
            b"ok line\ncaf\xe9\n",
            "not UTF-8 (invalid byte at offset 11)",
        ),
        ("binary.bin", b"PK\x03\x04\x00\x00junk", "binary file"),
        (
            "huge.txt",
            &[b'a'; (1 << 20) + 10],
            "split it into sentences",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = write(tmp.path(), name, bytes);
        let err = read_corpus(&p).unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains(want) && !err.contains('\n'),
            "{name}: {err}"
        );
    }
}
