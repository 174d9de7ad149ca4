//! Embedding lookup (`torch.nn.Embedding`): rows of a table gathered by token id, and in the
//! backward the rows' gradients summed into a dense gradient of the table.
//!
//! One node whose gradient is handed over through [`crate::model::grads`]: candle's
//! `index_select` backward fills a zeroed table with `index_add` and then adds it to another
//! zeroed table (its gradient store's), passes over the whole table (94 MB at DistilBERT's
//! 30,522 × 768) where this writes it once (the README's speed section has the cost). Each id's
//! gradient row is the sum of its tokens' rows in token order, as `index_add` sums them, so the
//! values are the same bits on any number of threads.

use super::buffer::{f32_slice, filled, ELEMS_PER_CHUNK};
use super::profile;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// `weight[ids]`: `ids` of any shape → `ids.shape + [dim]`, for a float32 table `[num, dim]` on
/// the CPU. Its gradient reaches the table only through [`crate::model::grads::backward`].
pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (num, dim) = weight.dims2()?;
    if !weight.is_contiguous() {
        // a contiguous copy would receive the gradient instead of the parameter
        bail!("embedding: the table must be contiguous");
    }
    let flat: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    if let Some(&bad) = flat.iter().find(|&&id| id as usize >= num) {
        bail!("embedding: token id {bad} is outside the table's {num} rows");
    }
    let mut dims = ids.dims().to_vec();
    dims.push(dim);
    let op = EmbeddingOp { ids: Arc::new(flat), dim };
    weight.apply_op1_arc(Arc::new(Box::new(op)))?.reshape(dims)
}

struct EmbeddingOp {
    ids: Arc<Vec<u32>>,
    dim: usize,
}

/// The rows of `table` (`dim` wide) at `ids`, one after the other.
fn gather(table: &[f32], ids: &[u32], dim: usize) -> Vec<f32> {
    filled(ids.len() * dim, |out| {
        out.par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(row, &id)| {
            let id = id as usize;
            for (o, &w) in row.iter_mut().zip(&table[id * dim..(id + 1) * dim]) {
                o.write(w);
            }
        })
    })
}

/// The gradient of a `num × dim` table from the gradients of the gathered rows: zeros except at
/// the ids, where it is the sum of their rows in token order.
fn scatter_sum(grad: &[f32], ids: &[u32], num: usize, dim: usize) -> Vec<f32> {
    // Tokens grouped by id, each group in token order (a stable sort).
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&t| ids[t as usize]);
    let groups: Vec<&[u32]> = order.chunk_by(|&a, &b| ids[a as usize] == ids[b as usize]).collect();
    let sums: Vec<Vec<f32>> = groups
        .par_iter()
        .map(|tokens| {
            let mut sum = vec![0f32; dim];
            for &t in tokens.iter() {
                let row = &grad[t as usize * dim..(t as usize + 1) * dim];
                sum.iter_mut().zip(row).for_each(|(s, &g)| *s += g);
            }
            sum
        })
        .collect();
    let mut table = filled(num * dim, |t| {
        t.par_chunks_mut(ELEMS_PER_CHUNK).for_each(|c| {
            c.iter_mut().for_each(|x| {
                x.write(0.0);
            })
        })
    });
    for (tokens, sum) in groups.iter().zip(sums) {
        let id = ids[tokens[0] as usize] as usize;
        table[id * dim..(id + 1) * dim].copy_from_slice(&sum);
    }
    table
}

impl CustomOp1 for EmbeddingOp {
    fn name(&self) -> &'static str {
        "emotune-embedding"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let table = f32_slice(s, l, "embedding table")?;
        if table.len() % self.dim != 0 || self.ids.iter().any(|&id| (id as usize + 1) * self.dim > table.len()) {
            bail!("embedding: a token id is outside the table ({} values, rows of {})", table.len(), self.dim);
        }
        let out = gather(table, &self.ids, self.dim);
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), self.dim))))
    }

    fn bwd(&self, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _span = profile::Span::new("emotune-embedding-backward");
        let (num, dim) = weight.dims2()?;
        let grad = grad.contiguous()?;
        let (storage, layout) = grad.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else { bail!("embedding: gradient is not on the CPU") };
        let g = f32_slice(cpu, layout, "embedding gradient")?;
        let table = scatter_sum(g, &self.ids, num, dim);
        let table = Tensor::from_vec(table, (num, dim), weight.device())?;
        crate::model::grads::leave([(weight.clone(), table)]);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::grads::backward;
    use crate::model::kernels::testing::{on_threads, rand_tensor};
    use candle_core::{Device, Var};

    /// Ids with repeats (the gradient rows of a repeated id are summed) and unused rows.
    fn ids() -> Tensor {
        let ids: Vec<u32> = (0..6 * 11).map(|i| (i * 7 % 13) as u32).collect();
        Tensor::from_vec(ids, (6, 11), &Device::Cpu).unwrap()
    }

    /// The table's gradient of `Σ r ⊙ lookup(table, ids)` through `lookup`.
    fn table_grad(lookup: impl Fn(&Tensor, &Tensor) -> Result<Tensor>) -> (Tensor, Tensor) {
        let table = Var::from_tensor(&rand_tensor(&[17, 40], 1)).unwrap();
        let y = lookup(table.as_tensor(), &ids()).unwrap();
        let r = rand_tensor(y.dims(), 2);
        let grads = backward(&(&y * &r).unwrap().sum_all().unwrap()).unwrap();
        (y, grads.get(table.as_tensor()).unwrap().clone())
    }

    fn candle_lookup(t: &Tensor, ids: &Tensor) -> Result<Tensor> {
        t.index_select(&ids.flatten_all()?, 0)?.reshape((6, 11, 40))
    }

    #[test]
    fn lookup_and_gradient_are_candles_bit_for_bit_on_any_thread_count() {
        let (y_ref, g_ref) = table_grad(candle_lookup);
        for threads in [1, 2, 3] {
            let (y, g) = on_threads(threads, || table_grad(embedding));
            assert_eq!(y.dims(), &[6, 11, 40]);
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(bits(&y), bits(&y_ref), "lookup, {threads} threads");
            // bitwise: each row's sum is taken in token order, as index_add takes it
            assert_eq!(bits(&g), bits(&g_ref), "table gradient, {threads} threads");
        }
    }

    #[test]
    fn an_id_outside_the_table_is_an_error() {
        let table = rand_tensor(&[5, 4], 3);
        let ids = Tensor::from_vec(vec![0u32, 5], 2, &Device::Cpu).unwrap();
        let err = embedding(&table, &ids).unwrap_err().to_string();
        assert!(err.contains("token id 5") && err.contains("5 rows"), "{err}");
    }

    #[test]
    fn a_constant_table_leaves_no_gradient() {
        let table = rand_tensor(&[17, 40], 1);
        let x = Var::from_tensor(&rand_tensor(&[6, 11, 40], 4)).unwrap();
        let y = (embedding(&table, &ids()).unwrap() * x.as_tensor()).unwrap();
        let grads = backward(&y.sum_all().unwrap()).unwrap();
        assert!(grads.get(&table).is_none());
        assert!(grads.get(x.as_tensor()).is_some());
    }
}
