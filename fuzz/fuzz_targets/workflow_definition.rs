#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| reskflow_hostile::workflow_definition(data));
