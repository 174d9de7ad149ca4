//! Parameters: loading them from a safetensors checkpoint under their Hugging Face names,
//! creating missing classification heads, and saving them back.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use safetensors::{Dtype as FileDtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The trainable parameters of a model, in creation order, under their checkpoint names.
#[derive(Clone, Default)]
pub struct ParamStore {
    entries: Vec<(String, Var)>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }

    fn push(&mut self, name: String, var: Var) {
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, var));
    }

    /// Serialises every parameter as float32 safetensors (`format: pt`, as Transformers writes).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        self.safetensors_bytes_where(|_| true)
    }

    fn safetensors_bytes_where(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<u8>> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for (name, var) in self.entries.iter().filter(|(name, _)| keep(name)) {
            let v: Vec<f32> = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            entries.push((name.clone(), var.dims().to_vec(), v));
        }
        let views: Vec<_> = entries.iter().map(|(n, shape, v)| (n.clone(), shape.clone(), v.as_slice())).collect();
        f32_safetensors_bytes(&views, HashMap::from([("format".to_string(), "pt".to_string())]))
    }

    /// Replaces every parameter's value with the tensor of the same name in `path` (a file this
    /// store or a checkpoint wrote); every parameter must be there with its shape.
    pub fn load_values(&self, path: &Path) -> Result<()> {
        let (tensors, _) = read_f32_safetensors(path)?;
        for (name, var) in &self.entries {
            let (shape, data) =
                tensors.get(name).ok_or_else(|| anyhow!("{}: missing tensor {name}", path.display()))?;
            if shape.as_slice() != var.dims() {
                bail!("{}: tensor {name} has shape {shape:?}, expected {:?}", path.display(), var.dims());
            }
            var.set(&Tensor::from_slice(data, shape.as_slice(), var.device())?)?;
        }
        Ok(())
    }

    /// The parameter holding the value of largest magnitude, and that magnitude (the likely
    /// culprit when a model's outputs overflow).
    pub fn largest_magnitude(&self) -> Result<Option<(&str, f32)>> {
        let mut best: Option<(&str, f32)> = None;
        for (name, var) in &self.entries {
            let v: Vec<f32> = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            let m = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            if best.is_none_or(|(_, b)| m > b) {
                best = Some((name, m));
            }
        }
        Ok(best)
    }

    /// The first parameter holding a NaN or an infinity, if any.
    pub fn first_non_finite(&self) -> Result<Option<&str>> {
        for (name, var) in &self.entries {
            let (storage, layout) = var.storage_and_layout();
            let finite = match (&*storage, layout.contiguous_offsets()) {
                (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => v[a..b].iter().all(|x| x.is_finite()),
                _ => {
                    let v: Vec<f32> = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                    v.iter().all(|x| x.is_finite())
                }
            };
            if !finite {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    /// Writes `model.safetensors`-style output atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsx::write_atomic(path, &self.to_safetensors_bytes()?)
    }

    /// Like [`ParamStore::save`], with only the parameters whose names `keep` accepts.
    pub fn save_where(&self, path: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
        crate::fsx::write_atomic(path, &self.safetensors_bytes_where(keep)?)
    }
}

/// Serialises named float32 tensors `(name, shape, values)` with metadata. The values are
/// handed to the serialiser as they lie in memory (safetensors is little-endian, as this target):
/// a checkpoint's 800 MB at DistilBERT-base size are copied once, into the file's bytes.
pub fn f32_safetensors_bytes(
    entries: &[(String, Vec<usize>, &[f32])],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    #[cfg(not(target_endian = "little"))]
    compile_error!("safetensors files are little-endian; this writes float32 values as they lie in memory");
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(n, shape, v)| {
            let bytes: &[u8] = bytemuck::cast_slice(v);
            Ok((n.clone(), safetensors::tensor::TensorView::new(FileDtype::F32, shape.clone(), bytes)?))
        })
        .collect::<Result<_>>()?;
    Ok(safetensors::tensor::serialize(views, Some(meta))?)
}

/// Named float32 tensors `name -> (shape, values)` and the metadata of a safetensors file.
pub type F32Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

pub fn read_f32_safetensors(path: &Path) -> Result<(F32Tensors, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a valid safetensors file (truncated or corrupt?): {e}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)?;
    let mut out = HashMap::new();
    for (name, view) in st.iter() {
        let data = to_f32(view.data(), view.dtype()).with_context(|| format!("{}: tensor {name}", path.display()))?;
        out.insert(name.to_string(), (view.shape().to_vec(), data));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// How a parameter that the checkpoint lacks is created.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// The parameter must be in the checkpoint.
    Required,
    /// Part of a task head: `N(0, std)` when absent (Transformers' `_init_weights` for Linear).
    Normal(f64),
    /// Part of a task head: zeros when absent (biases).
    Zeros,
    /// Ones (LayerNorm weights of a randomly initialised model).
    Ones,
}

/// How the encoder's linear layers are stored for inference when not in float32, chosen at
/// load (`--quantize int8`, `--dtype bf16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// Int8 weights per output channel, activations quantised per token at run time; the
    /// embeddings, LayerNorms, attention, GELU and the task head stay float32.
    Int8,
    /// Bf16 weights and activations with float32 sums (`--dtype bf16`, not a `--quantize`
    /// value); the rest stays float32.
    #[value(skip)]
    Bf16,
}

impl Quantize {
    /// The format's name (`int8`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Int8 => "int8",
            Quantize::Bf16 => "bf16",
        }
    }

    /// The flag that asks for it.
    pub fn flag(self) -> &'static str {
        match self {
            Quantize::Int8 => "--quantize int8",
            Quantize::Bf16 => "--dtype bf16",
        }
    }
}

/// The number format of the encoder's linear layers for inference (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Dtype {
    #[default]
    F32,
    /// bf16 matmuls with float32 sums where the device has them (see --dtype).
    Bf16,
}

/// Builds a [`ParamStore`] from a safetensors checkpoint, one named parameter at a time.
pub struct WeightLoader {
    /// The checkpoint, or `None` to initialise every parameter randomly.
    file: Option<PathBuf>,
    /// Standard deviation of random initialisation for weights the checkpoint lacks.
    init_std: f64,
    bytes: Vec<u8>,
    /// Names in the file with their dtype and shape.
    available: HashMap<String, (FileDtype, Vec<usize>)>,
    used: BTreeSet<String>,
    /// The base-model prefix (`distilbert.`, `bert.`): checkpoints of a bare base model store
    /// names without it.
    prefix: String,
    rng: ChaCha8Rng,
    device: Device,
    store: ParamStore,
    created: Vec<String>,
    /// Create the task head (names outside the base model) afresh even if the file has one.
    fresh_head: bool,
    /// Every parameter must be in the file: nothing is initialised (for inference).
    trained_only: bool,
    /// Prepare the encoder's linear layers for inference as they load (packed float32, or
    /// quantised as `quantize` says); such a model cannot train.
    for_inference: bool,
    quantize: Option<Quantize>,
}

impl WeightLoader {
    pub fn open(file: &Path, prefix: &str, seed: u64, device: &Device) -> Result<WeightLoader> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a valid safetensors file (truncated or corrupt?): {e}", file.display()))?;
        let available = st.iter().map(|(n, v)| (n.to_string(), (v.dtype(), v.shape().to_vec()))).collect();
        let mut wl = WeightLoader::random(prefix, seed, 0.0, device);
        wl.file = Some(file.to_path_buf());
        wl.bytes = bytes;
        wl.available = available;
        Ok(wl)
    }

    /// A loader without a checkpoint: every parameter is initialised as Transformers'
    /// `_init_weights` does (weights and embeddings `N(0, std)`, biases 0, LayerNorm weights 1).
    /// For speed work only: such a model has learned nothing.
    pub fn random(prefix: &str, seed: u64, std: f64, device: &Device) -> WeightLoader {
        WeightLoader {
            file: None,
            init_std: std,
            bytes: Vec::new(),
            available: HashMap::new(),
            used: BTreeSet::new(),
            prefix: prefix.to_string(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
            store: ParamStore::default(),
            created: Vec::new(),
            fresh_head: false,
            trained_only: false,
            for_inference: false,
            quantize: None,
        }
    }

    /// Refuses to initialise any parameter: a checkpoint used for prediction must hold its
    /// trained head.
    pub fn trained_only(mut self) -> WeightLoader {
        self.trained_only = true;
        self
    }

    /// Ignores the checkpoint's task head (e.g. when the label set changes): every parameter
    /// outside the base model is initialised anew.
    pub fn with_fresh_head(mut self) -> WeightLoader {
        self.fresh_head = true;
        self
    }

    /// Prepares the encoder's linear layers for inference while loading: quantised as `q`
    /// says, else float32 packed for the CPU's inference kernel. Prepared layers have no
    /// backward pass, and do not follow later changes of the parameters.
    pub fn for_inference(mut self, q: Option<Quantize>) -> WeightLoader {
        self.for_inference = true;
        self.quantize = q;
        self
    }

    pub fn inference(&self) -> bool {
        self.for_inference
    }

    pub fn quantize(&self) -> Option<Quantize> {
        self.quantize
    }

    fn describe(&self) -> String {
        self.file.as_ref().map_or_else(|| "random initialisation".to_string(), |f| f.display().to_string())
    }

    /// The name under which `name` is stored in the file, trying the bare base-model form and
    /// the old `gamma`/`beta` LayerNorm names.
    fn find(&self, name: &str) -> Option<String> {
        let mut candidates = vec![name.to_string()];
        if let Some(bare) = name.strip_prefix(&self.prefix) {
            candidates.push(bare.to_string());
        }
        let legacy: Vec<String> = candidates
            .iter()
            .filter_map(|c| {
                c.strip_suffix("LayerNorm.weight")
                    .map(|s| format!("{s}LayerNorm.gamma"))
                    .or_else(|| c.strip_suffix("LayerNorm.bias").map(|s| format!("{s}LayerNorm.beta")))
            })
            .collect();
        candidates.extend(legacy);
        candidates.into_iter().find(|c| self.available.contains_key(c))
    }

    /// Loads (or, for head parameters, creates) the parameter `name` of shape `shape`.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let init = match (&self.file, init) {
            (None, _) if name.ends_with(".bias") => Init::Zeros,
            (None, _) if name.to_ascii_lowercase().contains("norm") => Init::Ones,
            (None, _) => Init::Normal(self.init_std),
            (Some(_), init) => init,
        };
        let skip = self.fresh_head && !name.starts_with(&self.prefix);
        let found = if skip { None } else { self.find(name) };
        let tensor = match found {
            Some(stored) => self.load_stored(&stored, shape)?,
            None => self.create(name, shape, init)?,
        };
        let var = Var::from_tensor(&tensor)?;
        // A model loaded for inference computes with constants: no operation on them is
        // recorded for a backward pass, and a gradient asked of its input (an attribution)
        // is the only one made.
        let t = if self.for_inference { var.as_tensor().detach() } else { var.as_tensor().clone() };
        self.store.push(name.to_string(), var);
        Ok(t)
    }

    /// The tensor `stored` of the file, checked to have `shape` and finite values.
    fn load_stored(&mut self, stored: &str, shape: &[usize]) -> Result<Tensor> {
        let (dtype, file_shape) = self.available[stored].clone();
        if file_shape != shape {
            bail!("{}: tensor {stored} has shape {file_shape:?}, but the config implies {shape:?}", self.describe());
        }
        self.used.insert(stored.to_string());
        let st = SafeTensors::deserialize(&self.bytes)?;
        let view = st.tensor(stored)?;
        let data = to_f32(view.data(), dtype).with_context(|| format!("{}: tensor {stored}", self.describe()))?;
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            bail!(
                "{}: tensor {stored} holds {bad} NaN or infinite value(s); the checkpoint is broken",
                self.describe()
            );
        }
        Ok(Tensor::from_vec(data, shape, &self.device)?)
    }

    /// A parameter the checkpoint lacks, initialised as `init` says (or an error).
    fn create(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let file = self.describe();
        let tensor = match init {
            Init::Required => {
                bail!("{file}: missing tensor {name} (the checkpoint does not match the config's architecture)")
            }
            _ if self.trained_only => bail!(
                "{file}: missing tensor {name}: the checkpoint has no trained classification head (a base model, \
                 or its head was removed); fine-tune it with `emotune train` before predicting with it"
            ),
            Init::Normal(std) => {
                let n: usize = shape.iter().product();
                let dist = Normal::new(0.0f32, std as f32).map_err(|e| anyhow!("{e}"))?;
                let v: Vec<f32> = (0..n).map(|_| dist.sample(&mut self.rng)).collect();
                Tensor::from_vec(v, shape, &self.device)?
            }
            Init::Zeros => Tensor::zeros(shape, DType::F32, &self.device)?,
            Init::Ones => Tensor::ones(shape, DType::F32, &self.device)?,
        };
        self.created.push(name.to_string());
        Ok(tensor)
    }

    /// Finishes loading: reports what was created and what in the file was not used.
    pub fn finish(self) -> Result<ParamStore> {
        let Some(file) = &self.file else { return Ok(self.store) };
        let file = file.display();
        if !self.created.is_empty() {
            log::info!("{file}: newly initialised (not in the checkpoint): {}", self.created.join(", "));
        }
        let mut unused: Vec<&String> = self.available.keys().filter(|k| !self.used.contains(*k)).collect();
        unused.sort();
        for name in unused {
            if is_pretraining_or_buffer(name) {
                log::debug!("{file}: ignoring {name} (pretraining head or buffer)");
            } else {
                log::warn!("{file}: unused tensor {}", crate::display::clip(name, 200));
            }
        }
        Ok(self.store)
    }
}

fn is_pretraining_or_buffer(name: &str) -> bool {
    name.starts_with("vocab_projector.")
        || name.starts_with("vocab_transform.")
        || name.starts_with("vocab_layer_norm.")
        || name.starts_with("cls.")
        || name.starts_with("lm_head.")
        || name.contains("pooler.")
        || name.ends_with("position_ids")
}

fn to_f32(data: &[u8], dtype: FileDtype) -> Result<Vec<f32>> {
    Ok(match dtype {
        FileDtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        FileDtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        FileDtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        FileDtype::F64 => {
            data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
        }
        other => bail!("unsupported dtype {other:?} (expected a floating-point tensor)"),
    })
}
