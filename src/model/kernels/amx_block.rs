//! One 32 × 32 output block of the bf16 product ([`super::amx`]): the AMX `asm!` microkernel
//! (2 × 2 C tiles kept over the whole k loop, two A and two B tiles loaded per step, the next
//! step's tiles prefetched), the tile configuration it needs, and how a block's sums start
//! (zero, the output, a bias row) and reach the output (straight, or through an aligned buffer
//! where something runs on each block as it is computed). Where the CPU has AVX-512 BF16 but no
//! tiles, the same block is computed by `vdpbf16ps` ([`super::dpbf16_block`]).

use super::amx_pack::{holds, Operand, T};
use std::sync::OnceLock;

/// The instructions that compute a block of the bf16 product here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// AMX tiles (`tdpbf16ps`): Intel Sapphire Rapids and later.
    Tiles,
    /// AVX-512 BF16 (`vdpbf16ps`) on the tiles' packed operands: AMD Zen 4 and later.
    Dot,
}

impl Engine {
    /// What bench, the card and serve call it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Tiles => "AMX tiles (tdpbf16ps)",
            Engine::Dot => "AVX-512 BF16 (vdpbf16ps)",
        }
    }
}

/// The engine of this CPU, AMX tiles first (checked once); None where it has neither. `vdpbf16ps`
/// only on AMD's cores, which run it at twice the f32 multiply-add rate; Intel's run it at half
/// that rate (issue 25's measurement on a Xeon: bf16 slower than f32), so an Intel CPU without
/// tiles computes f32.
pub fn engine() -> Option<Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    *ENGINE.get_or_init(|| {
        let amd = crate::cpu::CpuIdentity::current().vendor == "AuthenticAMD";
        match (tiles_available(), amd && super::dpbf16_block::available()) {
            (true, _) => Some(Engine::Tiles),
            (false, true) => Some(Engine::Dot),
            (false, false) => None,
        }
    })
}

/// Why a CPU without an engine computes f32, for the commands' warnings.
pub const NO_ENGINE: &str = "this CPU has neither AMX bf16 tiles (amx_bf16) nor, on AMD, AVX-512 BF16 (avx512_bf16)";

/// True where the bf16 product runs on a matrix engine ([`engine`]).
pub fn available() -> bool {
    engine().is_some()
}

/// True where AMX bf16 runs: the CPU has AMX-TILE and AMX-BF16 and Linux granted this process
/// the tile state.
fn tiles_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| tiles_with("amx-bf16"))
}

/// True where AMX int8 runs: AMX-TILE and AMX-INT8, and the tile state granted.
pub fn int8_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| tiles_with("amx-int8"))
}

fn tiles_with(feature: &str) -> bool {
    let cpu = crate::cpu::CpuIdentity::current();
    cpu.features.contains(&"amx-tile") && cpu.features.contains(&feature) && request_tile_state()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permission to use
    // the AMX tile state; it reads and writes no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// A computed 32 × 32 block of a product's output while it is in L1: it holds rows `row..row +
/// rows` and columns `col..col + cols` of the output, row-major, 32 values a row, with zeros
/// where the block reaches past the output's edge.
pub struct Piece<'a> {
    pub row: usize,
    pub col: usize,
    pub rows: usize,
    pub cols: usize,
    pub values: &'a mut [f32; 4 * T * T],
}

/// What runs on each [`Piece`] of a product's output as it is computed, instead of a pass of
/// its own over the whole output: GELU after the first feed-forward layer, its derivative
/// after the second one's backward, the rounding and packing of the result as the next
/// product's operand.
pub type Then<'a> = &'a (dyn Fn(Piece) + Sync);

/// The tile configuration of [`tile_block`] (eight tiles of 16 rows × 64 bytes), loaded on
/// this thread for as long as the guard lives and released with it; nothing where the blocks
/// run on `vdpbf16ps`. Loading it costs about as much as a 32 × 32 block at k = 768
/// (measured), so it is done once per task, not per block: between the kernel's `asm!` blocks
/// nothing else on the thread touches the tiles (the compiler never uses AMX, and a task makes
/// no rayon calls that could run other work here).
pub(super) struct Tiles {
    loaded: bool,
}

impl Tiles {
    /// The configuration for the bf16 product's blocks (none on the `Dot` engine).
    pub(super) fn configure() -> Tiles {
        assert!(available(), "bf16 blocks computed on a CPU without a bf16 engine");
        Tiles::load(engine() == Some(Engine::Tiles))
    }

    /// The configuration for AMX int8's blocks.
    pub(super) fn configure_int8() -> Tiles {
        assert!(int8_available(), "AMX int8 tiles configured on a CPU without them");
        Tiles::load(true)
    }

    fn load(tiles: bool) -> Tiles {
        #[cfg(target_arch = "x86_64")]
        if tiles {
            let mut cfg = [0u8; 64];
            cfg[0] = 1; // palette 1
            for t in 0..8 {
                cfg[16 + 2 * t] = 64; // bytes per row
                cfg[48 + t] = T as u8; // rows
            }
            // SAFETY: the CPU has AMX and the process has the tile state (the callers assert
            // it); `cfg` is a valid 64-byte palette-1 configuration, read once.
            unsafe { std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) cfg.as_ptr(), options(nostack, readonly)) };
        }
        Tiles { loaded: tiles }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.loaded {
            // SAFETY: releases the tile state this guard configured; touches no memory.
            unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
        }
    }
}

/// Where a 32 × 32 output block lands: its first row and column and how much of it is inside.
#[derive(Clone, Copy)]
pub(super) struct Block {
    pub(super) row: usize,
    pub(super) col: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

/// A 32 × 32 f32 block on cache lines of its own (see `amx_pack`'s `TileRow`).
#[repr(C, align(64))]
struct CBlock([f32; 4 * T * T]);

/// 16 f32 on one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [f32; T]);

/// A bias on cache lines, padded with zeros to whole 32-column blocks, so that every block's C
/// tiles can be loaded from it (16 rows of the same 64 bytes: row stride 0).
pub(super) struct BiasRow(pub(super) Vec<Line>);

impl BiasRow {
    pub(super) fn new(bias: &[f32], n: usize) -> BiasRow {
        assert_eq!(bias.len(), n, "a bias of {} values for {n} columns", bias.len());
        let mut lines = vec![Line([0.0; T]); n.div_ceil(2 * T) * 2];
        for (line, values) in lines.iter_mut().zip(bias.chunks(T)) {
            line.0[..values.len()].copy_from_slice(values);
        }
        BiasRow(lines)
    }
}

/// [`Start`] as the block kernel reads it.
#[derive(Clone, Copy)]
pub(super) enum Init {
    Zero,
    Dst,
    /// A [`BiasRow`]'s first value, valid for as long as the product runs.
    Row(*const f32),
}

/// Where a product goes: the output (rows `rs` apart; none where `then` is its only consumer),
/// how its sums start, what runs on it.
pub(super) struct Output<'a> {
    pub(super) ptr: Option<*mut f32>,
    pub(super) rs: usize,
    pub(super) init: Init,
    pub(super) then: Option<Then<'a>>,
}

// SAFETY: `ptr` is only used to write disjoint blocks of one mutably borrowed output (see
// `amx::run`), and `init`'s bias row only read while the product runs; never shared state.
unsafe impl Send for Output<'_> {}
// SAFETY: as above.
unsafe impl Sync for Output<'_> {}

/// Computes one output block into `out`, each sum starting as `out.init` says, then runs
/// `out.then` on it. A whole block whose rows start on cache lines, with nothing to run on it,
/// goes straight between the output and the tiles; any other goes through a 32 × 32 buffer.
///
/// # Safety
/// `out.ptr`, where given, must be valid for reads (for `Init::Dst`) and writes of the block's
/// `rows × cols` elements at `row * rs + col`, with no other thread touching them; an
/// `Init::Row` must point to a live [`BiasRow`] of at least `col + 32` values.
pub(super) unsafe fn write_block(out: &Output, at: Block, a: Operand, b: Operand, k_tiles: usize) {
    let (dst_rs, init) = (out.rs, out.init);
    // SAFETY: the caller guarantees the block's elements are ours to read and write.
    let origin = out.ptr.map(|p| unsafe { p.add(at.row * dst_rs + at.col) });
    let from_bias = |p: *const f32| -> Option<(*const f32, usize)> {
        // SAFETY: columns `col..col + 32` of the bias row, inside it (the caller's contract).
        Some((unsafe { p.add(at.col) }, 0))
    };
    let whole = at.rows == 2 * T && at.cols == 2 * T;
    if let (Some(origin), None, true) = (origin, out.then, whole) {
        if (origin as usize).is_multiple_of(64) && dst_rs.is_multiple_of(T) {
            let from = match init {
                Init::Zero => None,
                Init::Dst => Some((origin.cast_const(), dst_rs)),
                Init::Row(p) => from_bias(p),
            };
            // SAFETY: a whole block: 32 rows of 32 elements at `dst_rs` apart, as the caller
            // guarantees; `from` is that block or 32 values of the bias row.
            return unsafe { block(origin, dst_rs, from, a, b, k_tiles) };
        }
    }
    // A whole block's tiles write every value of the buffer; a cut one's are zeroed first, so
    // that the rows and columns its tiles start from past the edge are defined too.
    let mut buffer = std::mem::MaybeUninit::<CBlock>::uninit();
    if !whole {
        buffer.write(CBlock([0f32; 4 * T * T]));
    }
    let c = buffer.as_mut_ptr().cast::<f32>();
    let from = match (init, origin) {
        (Init::Zero, _) => None,
        (Init::Dst, Some(origin)) => {
            for r in 0..at.rows {
                // SAFETY: row `r` of the block, `cols` elements, inside what the caller
                // guarantees, copied into row `r` of the 32 × 32 buffer.
                unsafe { std::ptr::copy_nonoverlapping(origin.add(r * dst_rs), c.add(r * 2 * T), at.cols) };
            }
            Some((c.cast_const(), 2 * T))
        }
        (Init::Dst, None) => unreachable!("a product accumulating onto no output"),
        (Init::Row(p), _) => from_bias(p),
    };
    // SAFETY: `c` is 32 rows of 32 f32; `from` is `c` or 32 values of the bias row.
    unsafe { block(c, 2 * T, from, a, b, k_tiles) };
    // SAFETY: every value is initialised: the tiles stored all 32 × 32 (a cut block was also
    // zeroed before).
    let c = unsafe { &mut buffer.assume_init_mut().0 };
    if let Some(then) = out.then {
        if !whole {
            // past the edge the tiles summed padding (or started from the bias): zeros there
            for (r, row) in c.chunks_exact_mut(2 * T).enumerate() {
                row[if r < at.rows { at.cols } else { 0 }..].fill(0.0);
            }
        }
        then(Piece { row: at.row, col: at.col, rows: at.rows, cols: at.cols, values: c });
    }
    if let Some(origin) = origin {
        for r in 0..at.rows {
            // SAFETY: as above.
            let row = unsafe { std::slice::from_raw_parts_mut(origin.add(r * dst_rs), at.cols) };
            row.copy_from_slice(&c[r * 2 * T..r * 2 * T + at.cols]);
        }
    }
}

/// The block on this CPU's engine: [`tile_block`] or [`super::dpbf16_block::dot_block`].
///
/// # Safety
/// As theirs: a [`Tiles`] guard lives on this thread, and `c` and `from` are valid as
/// [`tile_block`] says.
unsafe fn block(c: *mut f32, c_rs: usize, from: Option<(*const f32, usize)>, a: Operand, b: Operand, k_tiles: usize) {
    match engine() {
        // SAFETY: the caller's contract; the engine says which instructions the CPU has.
        Some(Engine::Tiles) => unsafe { tile_block(c, c_rs, from, a, b, k_tiles) },
        // SAFETY: as above.
        Some(Engine::Dot) => unsafe { super::dpbf16_block::dot_block(c, c_rs, from, a, b, k_tiles) },
        None => unreachable!("a bf16 block on a CPU without an engine (Tiles::configure asserts one)"),
    }
}

/// `prefetcht0` of the 16 cache lines of the tile one k step past each operand register `$reg`
/// (`$step` bytes on): the tiles come from L2, and asking for them one step early took about an
/// eighth off the kernel's time (`cargo bench --bench amx`).
macro_rules! next_tiles_to_l1 {
    ($($reg:literal, $step:literal),*) => {
        concat!($(next_tiles_to_l1!(@at $reg, $step, 0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960)),*)
    };
    (@at $reg:literal, $step:literal, $($offset:literal),*) => {
        concat!($("prefetcht0 [{", $reg, "} + {", $step, "}*1 + ", $offset, "]\n"),*)
    };
}

/// `C = from + A · B` for the 32 × 32 block `c` (rows `c_rs` elements apart) over `k_tiles`
/// steps of two A and two B tiles; C starts from the 32 × 32 block at `from` (its rows the given
/// stride apart: 0 repeats one row) or from zero.
///
/// # Safety
/// A [`Tiles`] guard must be alive on this thread; `c` must be valid for writes of 32 rows of 32
/// f32 at `c_rs` apart, and `from` for reads of 32 rows of 32 f32 at its stride.
unsafe fn tile_block(
    c: *mut f32,
    c_rs: usize,
    from: Option<(*const f32, usize)>,
    (a, a_step): Operand,
    (b, b_step): Operand,
    k_tiles: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(holds((a, a_step), k_tiles) && holds((b, b_step), k_tiles));
        // No start block: a null pointer, which the kernel tests for.
        let (l, ls) = from.unwrap_or((std::ptr::null(), 0));
        // SAFETY: the tiles are configured (a `Tiles` guard lives: the caller's contract).
        // Every tile load reads 16 rows of 64 bytes at 64-byte strides from
        // `k_tiles` 1 KiB tiles `step` elements apart in each slice, which holds them all
        // (asserted); C's stores touch 16 rows of 64 bytes at `c_rs` floats apart in the four
        // quadrants of the 32 × 32 block the caller vouches for, its loads the same at `from`.
        // The tile registers' values live only inside this block: C is stored before it ends.
        unsafe {
            std::arch::asm!(
                "test {l}, {l}",
                "jz 3f",
                "tileloadd tmm0, [{l} + {ls}*1]",
                "tileloadd tmm1, [{l} + {ls}*1 + 64]",
                // 16 rows on: two steps of 8 strides (no register to spare for the address)
                "lea {l}, [{l} + {ls}*8]",
                "lea {l}, [{l} + {ls}*8]",
                "tileloadd tmm2, [{l} + {ls}*1]",
                "tileloadd tmm3, [{l} + {ls}*1 + 64]",
                "jmp 2f",
                "3:",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {s64}*1]",
                "tileloadd tmm6, [{b0} + {s64}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s64}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {s64}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                next_tiles_to_l1!("a0", "sa", "b0", "sb", "b1", "sb", "a1", "sa"),
                "add {a0}, {sa}",
                "add {a1}, {sa}",
                "add {b0}, {sb}",
                "add {b1}, {sb}",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {cs}*1], tmm0",
                "tilestored [{c} + {cs}*1 + 64], tmm1",
                "lea {c}, [{c} + {cs}*8]",
                "lea {c}, [{c} + {cs}*8]",
                "tilestored [{c} + {cs}*1], tmm2",
                "tilestored [{c} + {cs}*1 + 64], tmm3",
                a0 = inout(reg) a[0].as_ptr() => _,
                a1 = inout(reg) a[1].as_ptr() => _,
                b0 = inout(reg) b[0].as_ptr() => _,
                b1 = inout(reg) b[1].as_ptr() => _,
                n = inout(reg) k_tiles => _,
                c = inout(reg) c => _,
                cs = in(reg) c_rs * 4,
                l = inout(reg) l => _,
                ls = in(reg) ls * 4,
                s64 = in(reg) 64usize,
                sa = in(reg) a_step * 2,
                sb = in(reg) b_step * 2,
                options(nostack),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no AMX off x86-64: {:?}", (c, c_rs, from, a, a_step, b, b_step, k_tiles));
}
