//! Every seed in `fuzz/corpus/<target>/` and every input a fuzzer crashed on, kept in
//! `fuzz/regressions/<target>/`, through its check: the fuzzers' findings stay tests.

use std::path::Path;

#[test]
fn seeds_and_past_crashes_pass_their_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (target, check) in reskflow_hostile::TARGETS {
        let mut seeds = 0;
        for kind in ["corpus", "regressions"] {
            let dir = root.join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.expect("a readable directory entry").path();
                let data = std::fs::read(&path).expect("a readable input file");
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{target}: {} fails its check", path.display());
                seeds += usize::from(kind == "corpus");
                replayed += 1;
            }
        }
        assert!(seeds > 0, "fuzz/corpus/{target} holds no seed");
    }
    assert!(replayed >= reskflow_hostile::TARGETS.len());
}
