//! The Python binding (`pip install .`, built by maturin with the `python` feature): a
//! `Classifier` that loads a model exactly as `emotune predict` does and answers as it prints,
//! for Python programs and engines such as Ray Data. Compute runs with the GIL released, on the
//! classifier's own thread pool when `num_threads` is given (so that several actors on one
//! machine do not each take every core).

use crate::device::{ComputeArgs, DeviceChoice};
use crate::infer::output::{prediction_json, ranked_json};
use crate::infer::Predictor;
use crate::model::{Dtype, Quantize, Task};
use clap::ValueEnum;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::str::FromStr;

pyo3::create_exception!(_emotune, EmotuneError, PyRuntimeError, "An error of emotune, with the CLI's message.");

fn error(e: anyhow::Error) -> PyErr {
    EmotuneError::new_err(format!("{e:#}"))
}

fn invalid(what: &str, given: &str, e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{what}={given:?}: {e}"))
}

/// A text-classification model loaded for inference.
#[pyclass(module = "emotune._emotune", frozen)]
pub struct Classifier {
    predictor: Predictor,
    pool: Option<rayon::ThreadPool>,
}

/// The texts of `texts`: one string, or a sequence of them.
fn texts_of(texts: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if texts.is_instance_of::<PyString>() {
        return Ok(vec![texts.extract::<String>()?]);
    }
    texts.extract::<Vec<String>>().map_err(|_| PyValueError::new_err("texts must be a str or a sequence of str"))
}

impl Classifier {
    /// Runs `work` without the GIL, on the classifier's pool when it has one.
    fn run<T: Send>(&self, py: Python<'_>, work: impl FnOnce(&Predictor) -> anyhow::Result<T> + Send) -> PyResult<T> {
        py.detach(|| match &self.pool {
            Some(pool) => pool.install(|| work(&self.predictor)),
            None => work(&self.predictor),
        })
        .map_err(error)
    }
}

#[pymethods]
impl Classifier {
    #[new]
    #[pyo3(signature = (model, device="auto", quantize=None, dtype="f32", max_length=None, num_threads=None, threshold=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: &str,
        device: &str,
        quantize: Option<&str>,
        dtype: &str,
        max_length: Option<usize>,
        num_threads: Option<usize>,
        threshold: Option<f32>,
    ) -> PyResult<Self> {
        let device = DeviceChoice::from_str(device).map_err(|e| invalid("device", device, e))?;
        let dtype = Dtype::from_str(dtype, true).map_err(|e| invalid("dtype", dtype, e))?;
        let quantize = match quantize {
            Some(q) => Some(Quantize::from_str(q, true).map_err(|e| invalid("quantize", q, e))?),
            None => None,
        };
        let pool = match num_threads {
            Some(0) => return Err(PyValueError::new_err("num_threads must be at least 1")),
            Some(n) => Some(rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| error(e.into()))?),
            None => None,
        };
        let load = || -> anyhow::Result<Predictor> {
            let compute = ComputeArgs { device, dtype, bf16: false };
            let (device, autocast) = compute.resolve()?;
            let format = crate::model::inference_format(quantize, dtype, &device)?;
            let mut p = Predictor::load(model, max_length, format, &device)?;
            p.model.autocast = autocast;
            if let Some(t) = threshold {
                p.set_threshold(t)?;
            }
            Ok(p)
        };
        let predictor = py.detach(load).map_err(error)?;
        Ok(Classifier { predictor, pool })
    }

    /// The labels, in id order.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.predictor.labels().to_vec()
    }

    /// A multi-label model's per-label thresholds; None for a single-label model.
    #[getter]
    fn thresholds(&self) -> Option<Vec<f32>> {
        (self.predictor.task() == Task::MultiLabel).then(|| self.predictor.thresholds.clone())
    }

    /// `single_label_classification` or `multi_label_classification`.
    #[getter]
    fn problem_type(&self) -> &'static str {
        self.predictor.task().problem_type()
    }

    /// Each text's prediction as `emotune predict` prints it: a dict with `text`, `label`,
    /// `score`, `scores` (and `labels` for a multi-label model, `top` with `top_k`).
    #[pyo3(signature = (texts, batch_size=64, top_k=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        batch_size: usize,
        top_k: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let texts = texts_of(texts)?;
        let lines = self.run(py, |p| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let preds = p.predict_grouped(&refs, batch_size)?;
            let lines: Vec<serde_json::Value> = preds
                .iter()
                .zip(&refs)
                .map(|(pred, text)| {
                    let mut line = prediction_json(text, pred, p.labels(), p.task());
                    if let Some(k) = top_k {
                        line["top"] = ranked_json(pred, p.labels(), k.min(p.labels().len()));
                    }
                    line
                })
                .collect();
            Ok(serde_json::to_string(&lines)?)
        })?;
        py.import("json")?.call_method1("loads", (lines,))
    }

    /// Probabilities as a float32 NumPy array `(len(texts), len(labels))`: softmax, or a sigmoid
    /// per label for a multi-label model.
    #[pyo3(signature = (texts, batch_size=64))]
    fn scores<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let texts = texts_of(texts)?;
        let n_labels = self.predictor.labels().len();
        let bytes = self.run(py, |p| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let preds = p.predict_grouped(&refs, batch_size)?;
            Ok(preds.iter().flat_map(|p| p.probs.iter().flat_map(|x| x.to_le_bytes())).collect::<Vec<u8>>())
        })?;
        let array = py.import("numpy")?.call_method1("frombuffer", (PyBytes::new(py, &bytes), "<f4"))?;
        array.call_method1("reshape", (texts.len(), n_labels))?.call_method0("copy")
    }

    fn __repr__(&self) -> String {
        format!("Classifier(labels={:?}, problem_type={:?})", self.predictor.labels(), self.problem_type())
    }
}

/// The native module behind `import emotune`.
#[pymodule]
fn _emotune(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Classifier>()?;
    m.add("EmotuneError", m.py().get_type::<EmotuneError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
