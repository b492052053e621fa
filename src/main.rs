fn main() {
    println!("switchboard: not wired yet");
}
