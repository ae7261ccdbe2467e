fn main() {
    afl::fuzz!(|data: &[u8]| kms_fuzz::audit_open(data));
}
