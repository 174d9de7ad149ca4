//! Records the versions of the main dependencies (from Cargo.lock) for the model card.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (krate, var) in [
        ("candle-core", "EMOTUNE_CANDLE_VERSION"),
        ("tokenizers", "EMOTUNE_TOKENIZERS_VERSION"),
        ("safetensors", "EMOTUNE_SAFETENSORS_VERSION"),
    ] {
        let needle = format!("name = \"{krate}\"\nversion = \"");
        let version = lock
            .find(&needle)
            .map(|i| &lock[i + needle.len()..])
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("unknown");
        println!("cargo:rustc-env={var}={version}");
    }
}
