//! Where the models run. Every command takes its device from [`select`], and the fused kernels
//! decide from a tensor's device and dtype whether they apply (`model::kernels::applies`): a
//! new backend plugs in here and in its kernels, nowhere else.
//!
//! NVIDIA GPUs need a binary built with the `cuda` feature (scripts/build-cuda). A binary
//! without it asked for a GPU says how to get one and stops; it never falls back silently.
//! Only `auto` means "the GPU if there is one".

use crate::weights::Dtype;
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use std::str::FromStr;

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    /// The CUDA GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
    /// The first CUDA GPU when the binary has CUDA and one is present, else the CPU.
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            "auto" => Ok(DeviceChoice::Auto),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("{s:?} is not a device (expected cpu, cuda, cuda:N or auto)")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Auto => f.write_str("auto"),
        }
    }
}

/// The `--device` and `--dtype` flags of every command that runs a model.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ComputeArgs {
    /// Where to compute: cpu, cuda, cuda:N, or auto (the first GPU when this binary has CUDA
    /// and one is present, else the CPU).
    #[arg(long, default_value = "auto", value_name = "DEVICE", help_heading = "Device and precision")]
    pub device: DeviceChoice,
    /// The matmuls' number format. bf16: on a GPU, mixed precision as torch.autocast (weights,
    /// optimiser state, softmax, LayerNorm, GELU and the loss stay f32); on a CPU with AMX, the
    /// encoder's projections on AMX tiles (training and inference); on a CPU with AVX-512 BF16
    /// on AMD (Zen 4), the same on vdpbf16ps; elsewhere float32, with a warning.
    #[arg(long, value_enum, default_value = "f32", help_heading = "Device and precision")]
    pub dtype: Dtype,
    /// The same as --dtype bf16 (the earlier spelling).
    #[arg(long, hide = true, help_heading = "Device and precision")]
    pub bf16: bool,
}

impl ComputeArgs {
    /// `--dtype`, with `--bf16` meaning bf16.
    pub fn dtype(&self) -> Dtype {
        if self.bf16 {
            Dtype::Bf16
        } else {
            self.dtype
        }
    }

    /// The device, and the dtype a model's matmuls run in while it is used (None: f32). For
    /// inference on the CPU, bf16 lives in the weights prepared at load
    /// ([`crate::model::inference_format`]), so this is f32 there.
    pub fn resolve(&self) -> Result<(Device, Option<DType>)> {
        let device = select(self.device)?;
        let bf16 = self.dtype() == Dtype::Bf16 && !device.is_cpu();
        Ok((device, bf16.then_some(DType::BF16)))
    }

    /// As [`ComputeArgs::resolve`], for training: on the CPU, bf16 where it has AMX.
    pub fn resolve_training(&self) -> Result<(Device, Option<DType>)> {
        let device = select(self.device)?;
        let bf16 = bf16_on(&device, self.dtype() == Dtype::Bf16);
        Ok((device, bf16.then_some(DType::BF16)))
    }
}

/// True when this binary was built with the `cuda` feature.
pub const HAS_CUDA: bool = cfg!(feature = "cuda");

/// The device `choice` names: an error when it names a GPU this binary or machine cannot use.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => cuda(n),
        DeviceChoice::Auto if HAS_CUDA => Ok(cuda(0).unwrap_or_else(|e| {
            log::info!("--device auto: no usable GPU ({e:#}); running on the CPU");
            Device::Cpu
        })),
        DeviceChoice::Auto => Ok(Device::Cpu),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal).map_err(|e| {
        // candle appends a backtrace to driver errors; the first line is the message.
        let cause = e.to_string().lines().next().unwrap_or_default().to_string();
        anyhow::anyhow!(
            "--device cuda:{ordinal}: no usable CUDA GPU with that number (is the NVIDIA driver loaded, \
             and are libcublas.so.13 and libcudart.so.13 on LD_LIBRARY_PATH?): {cause}"
        )
    })?;
    log::info!("device: CUDA GPU {ordinal}");
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize) -> Result<Device> {
    bail!(
        "--device cuda:{ordinal}: this emotune was built without CUDA. Build the GPU binary with \
         scripts/build-cuda (README, \"NVIDIA GPUs\"), or run with --device cpu"
    )
}

/// Whether training with `--dtype bf16` runs in bf16 on `device`: on a GPU, autocast; on a
/// CPU, only where it has a bf16 engine: AMX tiles, or AVX-512 BF16 on AMD (elsewhere bf16 would
/// be emulated or slower than float32: it says so and computes in float32).
pub fn bf16_on(device: &Device, bf16: bool) -> bool {
    if bf16 && device.is_cpu() && !crate::model::kernels::amx::available() {
        log::warn!("--dtype bf16: {}, so training computes in float32", crate::model::kernels::amx::NO_ENGINE);
        return false;
    }
    bf16
}

/// What the bench and `/info` call the device: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What TEI's `x-compute-type` header calls the device: `cpu` or `gpu`.
pub fn compute_type(device: &Device) -> &'static str {
    if device.is_cpu() {
        "cpu"
    } else {
        "gpu"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_names_what_it_refuses() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        for bad in ["cuda:", "cuda:x", "tpu", "CPU", ""] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(e.contains("cpu, cuda, cuda:N or auto"), "{e}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn bf16_on_the_cpu_needs_a_bf16_engine() {
        assert!(!bf16_on(&Device::Cpu, false));
        assert_eq!(bf16_on(&Device::Cpu, true), crate::model::kernels::amx::available());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_cuda_and_says_how_to_get_it() {
        let e = select(DeviceChoice::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("built without CUDA") && e.contains("scripts/build-cuda"), "{e}");
        assert!(select(DeviceChoice::Auto).unwrap().is_cpu());
    }
}
