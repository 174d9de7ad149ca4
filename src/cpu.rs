//! What the code sees of the CPU it runs on: vendor, family and model, the instruction sets the
//! kernels dispatch on, and the cache sizes gemm reads to block its loops. Bench figures are
//! labelled with it, and results that depend on the CPU's numerics (the golden test's records)
//! are keyed by it.

use std::fmt::Write;

/// The instruction sets that change which code runs (kernel dispatch, gemm's microkernels).
const FEATURES: &[&str] = &[
    "avx2",
    "fma",
    "avx512f",
    "avx512vl",
    "avx512bw",
    "avx512vnni",
    "avxvnni",
    "avx512bf16",
    "amx-tile",
    "amx-bf16",
    "amx-int8",
];

/// One CPU as the code sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuIdentity {
    /// `GenuineIntel`, `AuthenticAMD`, ...
    pub vendor: String,
    /// Display family and model (CPUID leaf 1, extended fields folded in as the manuals say).
    pub family: u32,
    pub model: u32,
    /// The marketing name (`/proc/cpuinfo`'s "model name"), for people; not part of the key.
    pub name: String,
    /// The instruction sets of [`FEATURES`] this CPU has.
    pub features: Vec<&'static str>,
    /// gemm's view of the L1d, L2 and L3 caches: (bytes, ways), as it reads them to block.
    pub caches: [(usize, usize); 3],
}

impl CpuIdentity {
    /// The CPU this process runs on.
    pub fn current() -> CpuIdentity {
        let (vendor, family, model) = vendor_family_model();
        let info = *gemm_common::cache::CACHE_INFO;
        CpuIdentity {
            vendor,
            family,
            model,
            name: model_name(),
            features: FEATURES.iter().copied().filter(|f| has_feature(f)).collect(),
            caches: info.map(|c| (c.cache_bytes, c.associativity)),
        }
    }

    /// What the numerics can depend on, as one line: vendor, family/model, instruction sets,
    /// caches (`GenuineIntel 6/143 avx2,fma,... L1d 48K/12 L2 2048K/16 L3 491520K/16`).
    pub fn key(&self) -> String {
        let mut k = format!("{} {}/{} {}", self.vendor, self.family, self.model, self.features.join(","));
        for (level, (bytes, ways)) in ["L1d", "L2", "L3"].iter().zip(self.caches) {
            let _ = write!(k, " {level} {}K/{ways}", bytes / 1024);
        }
        k
    }

    /// For a figure's caption: the name and what the kernels use.
    pub fn describe(&self) -> String {
        format!("{} (family {}, model {}; {})", self.name, self.family, self.model, self.features.join(", "))
    }
}

fn has_feature(f: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        match f {
            "avx2" => has!("avx2"),
            "fma" => has!("fma"),
            "avx512f" => has!("avx512f"),
            "avx512vl" => has!("avx512vl"),
            "avx512bw" => has!("avx512bw"),
            "avx512vnni" => has!("avx512vnni"),
            "avxvnni" => has!("avxvnni"),
            "avx512bf16" => has!("avx512bf16"),
            // std cannot name the AMX features on stable Rust: CPUID leaf 7, EDX bits 24, 22, 25.
            "amx-tile" => leaf7_edx() >> 24 & 1 == 1,
            "amx-bf16" => leaf7_edx() >> 22 & 1 == 1,
            "amx-int8" => leaf7_edx() >> 25 & 1 == 1,
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = f;
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn leaf7_edx() -> u32 {
    std::arch::x86_64::__cpuid_count(7, 0).edx
}

#[cfg(target_arch = "x86_64")]
fn vendor_family_model() -> (String, u32, u32) {
    use std::arch::x86_64::__cpuid;
    let v = __cpuid(0);
    let bytes: Vec<u8> = [v.ebx, v.edx, v.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    let vendor = String::from_utf8_lossy(&bytes).into_owned();
    let eax = __cpuid(1).eax;
    let (base_family, base_model) = ((eax >> 8) & 0xf, (eax >> 4) & 0xf);
    let family = if base_family == 0xf { base_family + ((eax >> 20) & 0xff) } else { base_family };
    let model =
        if base_family == 0x6 || base_family == 0xf { base_model | (((eax >> 16) & 0xf) << 4) } else { base_model };
    (vendor, family, model)
}

#[cfg(not(target_arch = "x86_64"))]
fn vendor_family_model() -> (String, u32, u32) {
    (std::env::consts::ARCH.to_string(), 0, 0)
}

fn model_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)));
    name.map_or_else(|| "unknown CPU".into(), |n| n.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_names_what_the_numerics_depend_on() {
        let id = CpuIdentity::current();
        let key = id.key();
        assert!(key.starts_with(&id.vendor) && key.contains(" L1d ") && key.contains(" L3 "), "{key}");
        assert!(id.caches.iter().all(|&(bytes, _)| bytes > 0), "{:?}", id.caches);
        // The same process sees the same CPU.
        assert_eq!(CpuIdentity::current(), id);
        // The instruction sets agree with what the kernels' own dispatch checks.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(id.features.contains(&"avx512f"), std::is_x86_feature_detected!("avx512f"));
    }
}
