#![allow(dead_code)]
//! Helpers shared by the integration tests.

pub mod browser;
pub mod hub;
pub mod server;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// `../shared` beside the repository (CI lays it there).
/// `../shared` beside the checkout, or `$EMOTUNE_SHARED` (scripts/gpu-check runs the test
/// binaries on a machine where the checkout's path is not the one they were built at).
pub fn shared() -> PathBuf {
    let p = std::env::var_os("EMOTUNE_SHARED")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"), PathBuf::from);
    assert!(p.is_dir(), "expected the shared fixtures at {}", p.display());
    p
}

pub fn fixture(name: &str) -> PathBuf {
    shared().join("fixtures").join(name)
}

pub fn hf_home() -> PathBuf {
    shared().join("hf")
}

/// Points the Hugging Face cache at `../shared/hf`, offline.
pub fn use_shared_cache() {
    std::env::set_var("HF_HOME", hf_home());
    std::env::set_var("HF_HUB_OFFLINE", "1");
}

pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl Reference {
    pub fn load(path: &std::path::Path) -> Reference {
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = meta.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        Reference { tensors, metadata }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("reference lacks {name}"))
    }

    pub fn texts(&self) -> Vec<String> {
        serde_json::from_str(&self.metadata["texts"]).unwrap()
    }

    /// A reference integer tensor as rows of u32.
    pub fn rows_u32(&self, name: &str) -> Vec<Vec<u32>> {
        let v: Vec<Vec<i64>> = self.get(name).to_vec2().unwrap();
        v.into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect()
    }
}

/// Largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let cpu = &Device::Cpu;
    let a = a.to_dtype(DType::F32).unwrap().to_device(cpu).unwrap();
    let b = b.to_dtype(DType::F32).unwrap().to_device(cpu).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

pub fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_emotune")
}
