//! The inference path: export, memory-mapped opening (bit for bit the owned model), integrity errors.
#![cfg(feature = "infer")]

use std::path::{Path, PathBuf};

use peerlm::checkpoint::{Checkpoint, Dtype};
use peerlm::data::{tokenizer_file, Batch, Tokenizer};
use peerlm::infer::{export, Load, Model, OpenOptions, Options, Verify};
use peerlm::nn::Module;
use peerlm::param::ParamKind;
use peerlm::tape::Tape;
use peerlm::train::{RunConfig, Trainer};

#[path = "common/tiny_peer.rs"]
mod tiny_peer;

const TEXT: &str = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. \
                    Experts in a pool: a million of them, each a single neuron, retrieved by product keys.";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peerlm-infer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(vocab: usize) -> RunConfig {
    let config = tiny_peer::config(vocab, 16);
    config.validate().unwrap();
    config
}

/// A training checkpoint of a small PEER model after two steps (so it holds optimizer moments and
/// batch-norm statistics), and its exported model file.
fn files(dir: &Path) -> (PathBuf, PathBuf) {
    let tokenizer = Tokenizer::train(&[TEXT, TEXT], 300).unwrap();
    let mut trainer = Trainer::new(config(tokenizer.vocab_size())).unwrap();
    trainer.set_tokenizer(tokenizer_file::to_text(&tokenizer));
    let ids = tokenizer.encode(TEXT);
    for step in 0..2 {
        let window = |shift: usize| ids[step + shift..step + shift + 32].to_vec();
        let batch = Batch { inputs: window(0), targets: window(1), batch_size: 2, seq_len: 16 };
        trainer.train_step(&batch).unwrap();
    }
    let checkpoint = dir.join("checkpoint.safetensors");
    trainer.to_checkpoint().save(&checkpoint).unwrap();
    let model = dir.join("model.safetensors");
    export(&checkpoint, &model, Dtype::F32).unwrap();
    (checkpoint, model)
}

fn generated(model: &mut Model, seed: u64) -> (Vec<u32>, Vec<u8>) {
    let options = Options { max_new_tokens: 40, temperature: 1.0, top_k: None, seed, stop_at_end_of_text: false };
    let mut bytes = Vec::new();
    let tokens = model.generate("The quick", &options, |_, b| bytes.extend_from_slice(b)).unwrap();
    (tokens, bytes)
}

fn logits(model: &mut Model, tokens: &[u32]) -> Vec<u32> {
    let out = model.gpt_mut().forward(&mut Tape::no_grad(), tokens, 1, false);
    out.logits.value().data().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn the_mapped_model_computes_the_owned_models_bits() {
    let dir = temp_dir("bits");
    let (checkpoint, path) = files(&dir);
    let mut mapped = Model::open(&path).unwrap();
    let mut owned = Model::open_with(&path, &OpenOptions { load: Load::Copied, ..OpenOptions::default() }).unwrap();
    for param in mapped.gpt_mut().params() {
        assert!(param.value.is_mapped(), "{} was copied", param.name);
    }
    assert!(owned.gpt_mut().params().iter().all(|p| !p.value.is_mapped()));
    let tokens: Vec<u32> = (0..16).map(|i| (i * 37 % 290) as u32).collect();
    assert_eq!(logits(&mut mapped, &tokens), logits(&mut owned, &tokens));
    assert_eq!(generated(&mut mapped, 7), generated(&mut owned, 7));
    assert_eq!(mapped.score(TEXT).nats.to_bits(), owned.score(TEXT).nats.to_bits());
    // The training checkpoint opens too, and today's load-everything path computes the same.
    let mut from_checkpoint = Model::open(&checkpoint).unwrap();
    let (mut loaded, _, _) = peerlm::train::load_model(Checkpoint::load(&checkpoint).unwrap()).unwrap();
    let loaded_logits = loaded.forward(&mut Tape::no_grad(), &tokens, 1, false).logits.value().data().to_vec();
    assert_eq!(logits(&mut from_checkpoint, &tokens), loaded_logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    assert_eq!(generated(&mut from_checkpoint, 3), generated(&mut mapped, 3));
}

#[test]
fn export_drops_the_optimizer_state_and_bf16_halves_the_tables() {
    let dir = temp_dir("export");
    let (checkpoint, path) = files(&dir);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&path) * 5 / 2 < size(&checkpoint), "{} vs {}", size(&path), size(&checkpoint));
    let bf16 = dir.join("bf16.safetensors");
    export(&checkpoint, &bf16, Dtype::Bf16).unwrap();
    let mut model = Model::open(&path).unwrap();
    // Exactly the weights and batch-norm statistics, whatever else the checkpoint holds.
    let mut expected: Vec<String> = model.gpt_mut().params().iter().map(|p| p.name.clone()).collect();
    expected.extend(model.gpt_mut().buffers().into_iter().map(|(name, _)| name));
    expected.sort();
    let header = peerlm::checkpoint::Header::parse(&std::fs::read(&path).unwrap()).unwrap();
    let mut stored: Vec<String> = header.entries.iter().map(|e| e.name.clone()).collect();
    stored.sort();
    assert_eq!(stored, expected);
    assert_eq!(header.metadata["format"], "peerlm-model-v1");
    let table_bytes: u64 = model
        .gpt_mut()
        .params()
        .iter()
        .filter(|p| p.kind == ParamKind::Table)
        .map(|p| 4 * p.value.numel() as u64)
        .sum();
    assert!(table_bytes > 0);
    assert!(
        size(&path) - size(&bf16) >= table_bytes / 2 - 2048,
        "tables {table_bytes}, files {} {}",
        size(&path),
        size(&bf16)
    );
    let mut rounded = Model::open(&bf16).unwrap();
    let (exact, approximate) = (model.score(TEXT), rounded.score(TEXT));
    assert_eq!(exact.tokens, approximate.tokens);
    assert!((exact.loss() - approximate.loss()).abs() < 0.05 * exact.loss(), "{exact:?} vs {approximate:?}");
}

#[test]
fn damaged_files_are_clear_errors() {
    let dir = temp_dir("damaged");
    let (_, path) = files(&dir);
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.safetensors");
    let open = |content: &[u8], verify: Verify| {
        std::fs::write(&bad, content).unwrap();
        Model::open_with(&bad, &OpenOptions { verify, ..OpenOptions::default() }).err().map(|e| e.to_string())
    };
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for cut in [0, 7, 8, 9, header_len, header_len + 8, header_len + 9, bytes.len() / 2, bytes.len() - 1] {
        let error = open(&bytes[..cut], Verify::Small).unwrap_or_else(|| panic!("a file cut at {cut} bytes opened"));
        assert!(error.starts_with(&bad.display().to_string()), "{error}");
    }
    let missing = Model::open(dir.join("missing.safetensors")).err().unwrap().to_string();
    assert!(missing.contains("missing.safetensors") && missing.contains("No such file"), "{missing}");

    // A flipped bit in a small tensor is caught at open; one in a table only when asked (streaming).
    let header = peerlm::checkpoint::Header::parse(&bytes).unwrap();
    let find = |suffix: &str| header.entries.iter().find(|e| e.name.ends_with(suffix)).unwrap().clone();
    for (suffix, caught_by_default) in [("ln_f.gain", true), ("ffw.u", false)] {
        let entry = find(suffix);
        let mut flipped = bytes.clone();
        flipped[header.data_start + entry.begin + 3] ^= 0x40;
        assert_eq!(open(&flipped, Verify::Small).is_some(), caught_by_default, "{suffix}");
        let error = open(&flipped, Verify::All).unwrap();
        assert!(error.contains(&format!("tensor {}: checksum mismatch", entry.name)), "{error}");
    }
}

/// The directory holding libpeerlm.so: cargo builds it beside this test's executable (in `deps/`) and
/// copies it one level up.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    [deps.clone(), deps.parent().unwrap().to_path_buf()]
        .into_iter()
        .find(|dir| dir.join("libpeerlm.so").exists())
        .unwrap_or_else(|| panic!("no libpeerlm.so near {}", deps.display()))
}

#[test]
fn the_c_example_generates_scores_and_reports_errors() {
    let dir = temp_dir("c");
    let (_, model) = files(&dir);
    let (library, exe) = (library_dir(), dir.join("generate"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compiled = std::process::Command::new("cc")
        .arg("-O2")
        .arg("-Wall")
        .arg("-Werror")
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join("examples/c/generate.c"))
        .arg(format!("-L{}", library.display()))
        .arg(format!("-Wl,-rpath,{}", library.display()))
        .arg("-lpeerlm")
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc runs");
    assert!(compiled.status.success(), "cc: {}", String::from_utf8_lossy(&compiled.stderr));
    let run = |model: &Path| {
        let out = std::process::Command::new(&exe).arg(model).arg("The quick").arg("12").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, stdout, stderr) = run(&model);
    assert_eq!(status, Some(0), "stdout {stdout}\nstderr {stderr}");
    assert!(stdout.starts_with("The quick"), "{stdout}");
    let summary = stdout.lines().last().unwrap();
    assert!(summary.starts_with("generated ") && summary.contains(" tokens (callback saw "), "{summary}");

    let missing = dir.join("missing.safetensors");
    let (status, _, stderr) = run(&missing);
    assert_eq!(status, Some(1));
    assert!(
        stderr.starts_with(&format!("error: {}", missing.display())) && stderr.contains("No such file"),
        "{stderr}"
    );
    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
    let (status, _, stderr) = run(&truncated);
    assert_eq!(status, Some(1));
    assert!(stderr.contains("truncated or padded"), "{stderr}");
}

/// A deterministic stand-in for the fuzzer (fuzz/fuzz_targets/model_file.rs), run by every `cargo test`:
/// random byte changes in the header and the data of a valid file open or fail, never panic, and a file
/// that opens can score text.
#[test]
fn mutated_files_open_or_fail_without_panicking() {
    let dir = temp_dir("mutated");
    let (_, path) = files(&dir);
    let bytes = std::fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let bad = dir.join("mutated.safetensors");
    let mut rng = peerlm::Rng::new(15);
    let (mut opened, mut refused) = (0, 0);
    for trial in 0..300 {
        let mut mutated = bytes.clone();
        for _ in 0..1 + trial % 3 {
            // Mostly the header, where a changed digit makes another config, shape or offset.
            let at = if rng.below(4) > 0 { rng.below(header_end as u64) } else { rng.below(bytes.len() as u64) };
            mutated[at as usize] = match rng.below(3) {
                0 => b"0123456789"[rng.below(10) as usize],
                1 => mutated[at as usize] ^ (1 << rng.below(8)),
                _ => rng.below(256) as u8,
            };
        }
        std::fs::write(&bad, &mutated).unwrap();
        match Model::open_with(&bad, &OpenOptions { verify: Verify::All, ..OpenOptions::default() }) {
            Ok(mut model) => {
                model.score("a");
                opened += 1;
            }
            Err(e) => {
                assert!(e.to_string().starts_with(&bad.display().to_string()), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 200, "only {refused} of 300 damaged files were refused ({opened} opened)");
}
