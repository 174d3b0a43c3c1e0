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

/// The documents of every block of `path`, read block by block.
fn block_documents(blocks: &[bertline::corpus::CorpusBlock]) -> Vec<Vec<String>> {
    blocks
        .iter()
        .flat_map(|b| {
            let text = b.read().unwrap();
            documents(&text)
                .into_iter()
                .map(|d| d.into_iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn blocks_cut_at_blank_lines_and_keep_every_document_whole() {
    use bertline::corpus::corpus_blocks_of_size;
    let tmp = tempfile::tempdir().unwrap();
    // Documents of 2-3 lines; blank lines with stray spaces and a CRLF among them.
    let text = "a1.\na2.\n\nb1.\nb2.\nb3.\n  \nc1.\n\r\nd1.\nd2.\n\n\ne1.\ne2.\n";
    let big = write(tmp.path(), "big.txt", text.as_bytes());
    let small = write(tmp.path(), "small.txt", b"x1.\n\ny1.\n");
    let files = vec![big.clone(), small.clone()];
    let whole = documents(text);
    // From 16 bytes on, a blank line always comes within a block of the target.
    for size in 16..=text.len() as u64 + 1 {
        let blocks = corpus_blocks_of_size(&files, size).unwrap();
        // Blocks tile each file in order, and every cut is at the start of a blank line.
        let of_big: Vec<_> = blocks.iter().filter(|b| b.path == big).collect();
        assert_eq!(of_big[0].bytes.start, 0);
        assert_eq!(of_big.last().unwrap().bytes.end, text.len() as u64);
        for (i, pair) in of_big.windows(2).enumerate() {
            assert_eq!(pair[0].bytes.end, pair[1].bytes.start);
            assert_eq!(pair[1].block_index, i + 1);
            let rest = &text[pair[1].bytes.start as usize..];
            let line = rest.split('\n').next().unwrap();
            assert!(line.trim().is_empty(), "size {size}: cut before {line:?}");
        }
        // Block by block, the documents are those of the whole file, in order.
        let by_block = block_documents(&of_big.into_iter().cloned().collect::<Vec<_>>());
        assert_eq!(by_block.len(), whole.len(), "size {size}");
        for (a, b) in by_block.iter().zip(&whole) {
            assert_eq!(a, b, "size {size}");
        }
        let last = blocks.last().unwrap();
        assert_eq!((last.file_index, last.block_index), (1, 0));
    }
    // A file within the block size is one block.
    let one = corpus_blocks_of_size(&files, text.len() as u64).unwrap();
    assert_eq!(one.len(), 2);
    assert_eq!(one[0].bytes, 0..text.len() as u64);
}

#[test]
fn a_document_longer_than_two_blocks_is_cut_at_a_line() {
    use bertline::corpus::corpus_blocks_of_size;
    let tmp = tempfile::tempdir().unwrap();
    let lines: String = (0..40).map(|i| format!("sentence {i:02}.\n")).collect();
    let path = write(tmp.path(), "long.txt", lines.as_bytes());
    let blocks = corpus_blocks_of_size(std::slice::from_ref(&path), 50).unwrap();
    assert!(blocks.len() > 2, "{blocks:?}");
    let mut seen = Vec::new();
    for b in &blocks {
        assert!(b.len() <= 2 * 50 + 14, "{b:?}");
        let text = b.read().unwrap();
        assert!(text.ends_with('\n'), "cut mid-line: {text:?}");
        seen.extend(text.lines().map(String::from));
    }
    assert_eq!(seen, lines.lines().map(String::from).collect::<Vec<_>>());
}

#[test]
fn block_errors_give_offsets_in_the_whole_file() {
    use bertline::corpus::corpus_blocks_of_size;
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = b"one.\n\ntwo.\n\nthree.\n\n".to_vec();
    let bad_at = bytes.len();
    bytes.extend_from_slice(b"caf\xe9.\n");
    let path = write(tmp.path(), "bad.txt", &bytes);
    let blocks = corpus_blocks_of_size(std::slice::from_ref(&path), 8).unwrap();
    let err = blocks
        .iter()
        .find_map(|b| b.read().err())
        .expect("the latin-1 byte is refused")
        .to_string();
    let offset = format!("invalid byte at offset {}", bad_at + 3);
    assert!(err.contains(&offset) && err.contains("bad.txt"), "{err}");
}
