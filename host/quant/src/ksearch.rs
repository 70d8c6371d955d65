//! Scale searches shared by the K-quant and IQ4 quantizers: for a group of values, pick a
//! scale (and for the asymmetric types a min) and integer levels that minimise a weighted
//! error, the way llama.cpp's reference quantizers do.
//!
//! Invariants: these routines must make the same decisions as llama.cpp's `make_qx_quants`
//! (rmse_type 1, no importance weights), `make_q3_quants` (with rmse), `make_qkx2_quants` and
//! `best_index_int8`, so every f32 expression keeps llama.cpp's operand order and
//! association; otherwise the rare near-tie between two candidate scales could be broken
//! differently and change the output bytes. Rounding goes through [`nearest_int`], which
//! reproduces llama.cpp's magic-number round-half-to-even (valid for |x| < 2^22; larger or
//! NaN inputs give garbage levels that callers clamp, never a panic). Clamps with run-time
//! bounds are written `min(hi).max(lo)` like C's `MAX(lo, MIN(hi, l))`: branch-free, with no
//! panic path.

/// Round to nearest, ties to even, via the 1.5 * 2^23 trick (the mantissa of the sum holds
/// the rounded integer).
#[inline]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Groups whose largest magnitude is below this are treated as all zero.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Index of the codebook entry nearest to `x` in the strictly increasing table `val`
/// (llama.cpp `best_index_int8`: ties go to the upper entry).
///
/// llama.cpp bisects; the bracket it ends with is `val[hi - 1] <= x < val[hi]` where `hi` is
/// the number of entries `<= x` clamped to 1..=15 (the clamps reproduce its early returns for
/// `x` outside the table), so we count instead: branch-free and vectorisable, same result.
/// A NaN, which bisection walks to the top, maps to 15 explicitly.
#[inline]
pub fn best_index_f32(val: &[f32; 16], x: f32) -> usize {
    let count = val.iter().map(|&v| (v <= x) as usize).sum::<usize>();
    let hi = count.clamp(1, 15);
    if x.is_nan() {
        15
    } else if x - val[hi - 1] < val[hi] - x {
        hi - 1
    } else {
        hi
    }
}

/// [`best_index_f32`] for an i8 table.
#[cfg(test)]
pub fn best_index_int8(val: &[i8; 16], x: f32) -> usize {
    best_index_f32(&val.map(|v| v as f32), x)
}

/// The value of largest magnitude, with its sign, and that magnitude.
#[inline]
pub fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric levels in `[-nmax, nmax)` weighted by x^2 (llama.cpp `make_qx_quants` with
/// `rmse_type == 1` and no importance weights). Writes `L[i] = level + nmax` and returns the
/// least-squares scale of the best of 19 trial inverse scales around `-nmax / max`.
pub fn make_qx_quants_rmse1(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let clamp = |l: i32| l.min(nmax - 1).max(-nmax);
    // Weighted sums for a trial inverse scale: (sum w*x*l, sum w*l*l) with w = x^2.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &xi in x {
            let l = clamp(nearest_int(iscale * xi)) as f32;
            let w = xi * xi;
            sumlx += w * xi * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, levels: &mut [i8]| {
        for (li, &xi) in levels.iter_mut().zip(x) {
            *li = (nmax + clamp(nearest_int(iscale * xi))) as i8;
        }
    };
    let iscale = -(nmax as f32) / max;
    fill(iscale, levels);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric levels in `[-nmax, nmax)` for Q3_K (llama.cpp `make_q3_quants` with rmse):
/// start from `-nmax / max`, then greedily move single levels while the x^2-weighted fit
/// improves (at most 5 sweeps). Writes `L[i] = level + nmax`; returns the scale.
pub fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (li, &xi) in levels.iter_mut().zip(x) {
        let l = nearest_int(iscale * xi).min(nmax - 1).max(-nmax);
        *li = l as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (li, &xi) in levels.iter_mut().zip(x) {
            let w = xi * xi;
            let cur = *li as f32;
            let mut slx = sumlx - w * xi * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(xi * sl2 / slx).min(nmax - 1).max(-nmax);
                if new_l != *li as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for li in levels.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of the asymmetric (scale + min) search.
pub struct Qkx2 {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
}

/// Asymmetric levels in `[0, nmax]` with `x ~ scale * L + min`, `min <= 0` (llama.cpp
/// `make_qkx2_quants`): tries `nstep + 1` inverse scales, each refined by weighted least
/// squares, and keeps the one with the lowest weighted error (absolute error if `MAD`, as
/// Q2_K uses, else squared). Returns `(scale, -min)`. Sizes are compile-time so the inner
/// loops run without bounds checks.
pub fn make_qkx2_quants<const N: usize, const MAD: bool>(p: &Qkx2, x: &[f32; N], weights: &[f32; N], levels: &mut [u8; N]) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *levels = [0; N];
        return (0.0, -min);
    }
    let nmax = p.nmax;
    let err = |d: f32| if MAD { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min)).min(nmax).max(0) as u8;
        levels[i] = l;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; N];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..N {
            let l = nearest_int(iscale * (x[i] - min)).min(nmax).max(0);
            aux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..N {
                cur_error += weights[i] * err(this_scale * aux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                *levels = aux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [(0.5f32, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-7.51, -8)] {
            assert_eq!(nearest_int(x), want, "{x}");
        }
    }

    #[test]
    fn best_index_picks_nearest_code() {
        let v = crate::blocks::KVALUES_IQ4NL;
        // Exact ties go up, and out-of-range values clamp, as llama.cpp's bisection does.
        assert_eq!(best_index_int8(&v, -4.5), 8);
        assert_eq!(best_index_int8(&v, -500.0), 0);
        assert_eq!(best_index_int8(&v, 113.0), 15);
        assert_eq!(best_index_int8(&v, -127.0), 0);
        assert_eq!(best_index_int8(&v, f32::NAN), 15);
        for x in -140..=130 {
            let x = x as f32 + 0.25;
            let got = best_index_int8(&v, x);
            let brute = (0..16).min_by(|&a, &b| (v[a] as f32 - x).abs().total_cmp(&(v[b] as f32 - x).abs())).unwrap();
            assert_eq!((v[got] as f32 - x).abs(), (v[brute] as f32 - x).abs(), "{x}");
        }
    }
}
