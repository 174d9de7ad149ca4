//! Where the models run. Every command takes its device from [`select`], and the fused kernels
//! decide from a tensor's device and dtype whether they apply (`model::kernels::applies`): a
//! new backend plugs in here and in its kernels, nowhere else.

use anyhow::Result;
use candle_core::Device;

/// The device the commands compute on: the CPU (parameters in float32).
pub fn select() -> Result<Device> {
    Ok(Device::Cpu)
}

/// What TEI's `x-compute-type` header calls the device: `cpu` or `gpu`.
pub fn compute_type(device: &Device) -> &'static str {
    if device.is_cpu() {
        "cpu"
    } else {
        "gpu"
    }
}
