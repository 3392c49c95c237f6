#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| reskflow_hostile::http1_request(data));
