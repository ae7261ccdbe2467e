fn main() {
    afl::fuzz!(|data: &[u8]| kms_fuzz::rpc::call(data));
}
