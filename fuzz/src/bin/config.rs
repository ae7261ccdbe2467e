fn main() {
    afl::fuzz!(|data: &[u8]| kms_fuzz::config(data));
}
