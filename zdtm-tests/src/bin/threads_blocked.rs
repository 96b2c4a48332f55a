//! A multi-threaded process whose threads are blocked in different places
//! when it is checkpointed (see zdtm-tests/src/threads.rs).

fn main() {
    zdtm_tests::threads::main()
}
