//! fp8 KV cache scale calibration at load (`--kv-scales auto`, `ROCMFORGE_KV_SCALES=auto`), as
//! vLLM's `calculate_kv_scales`: a fixed text of a few hundred tokens, tokenized with the model's
//! own tokenizer, runs once through the model; each layer's K and V absolute maxima per KV head
//! become its scales (`rocmforge_runtime::kv_scales`), fixed for the life of the loaded model.
//!
//! The default stays vLLM's: the checkpoint's scales when it has them, else 1.0. `auto` only
//! calibrates a model whose checkpoint has none, and only for an fp8 cache (f16 and q8_0 ignore
//! scales; nothing is run for them).
//!
//! The text mixes registers a served model meets (prose, dialogue, numbers, code, a list) so the
//! activations' range is representative; it is ours, written for this purpose, and fixed, so
//! the same model always gets the same scales.

use rocmforge_runtime::{Executor, KvScales};
use rocmforge_tokenizer::Tokenizer;

use crate::EngineError;

/// How a model's fp8 KV scales are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvScalesMode {
    /// The checkpoint's scales, else 1.0 (vLLM's default).
    #[default]
    Checkpoint,
    /// The checkpoint's scales, else calibrated at load over [`CALIBRATION_TEXT`].
    Auto,
}

impl std::str::FromStr for KvScalesMode {
    type Err = String;
    /// `auto`, or `checkpoint` (the default; also `default`), any case.
    fn from_str(s: &str) -> Result<KvScalesMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(KvScalesMode::Auto),
            "checkpoint" | "default" => Ok(KvScalesMode::Checkpoint),
            _ => Err(format!("kv scales '{s}' is not supported: use auto|checkpoint")),
        }
    }
}

/// `ROCMFORGE_KV_SCALES` (None when unset or empty); a bad value is an error naming it.
pub fn kv_scales_from_env() -> Result<Option<KvScalesMode>, EngineError> {
    kv_scales_from_vars(|k| std::env::var(k).ok())
}

/// [`kv_scales_from_env`] over any variable lookup.
pub fn kv_scales_from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<KvScalesMode>, EngineError> {
    match get("ROCMFORGE_KV_SCALES").filter(|v| !v.trim().is_empty()) {
        Some(v) => v.parse().map(Some).map_err(|e| EngineError::Invalid(format!("ROCMFORGE_KV_SCALES: {e}"))),
        None => Ok(None),
    }
}

/// The calibration text (a few hundred tokens with any common tokenizer).
pub const CALIBRATION_TEXT: &str = "A small bakery on the corner of Mill Street opens at six every morning. \
The owner, a retired ship's engineer named Tomas, starts the ovens at four, weighs flour on a brass scale he \
restored himself, and writes the day's prices on a chalkboard: rye loaf 4.50, seeded roll 0.90, apple tart 3.25. \
Customers often ask why the bread tastes different from the supermarket's. He tells them it is time, not magic: \
the dough rests for eighteen hours at 12 degrees Celsius, which lets enzymes break starch into sugars and gives \
the yeast room to work slowly.\n\n\
\"Can you teach me?\" asked a student one rainy Tuesday.\n\
\"Come back at four tomorrow,\" Tomas said, \"and bring a notebook. Half of baking is writing down what went wrong.\"\n\n\
The student came back. Over the following months she kept a table of every batch: hydration between 68% and 82%, \
starter ratios of 1:5:5 and 1:10:10, proofing times from 3 to 19 hours. She wrote a short program to plot the \
results:\n\n\
def rise_ratio(volume_before, volume_after):\n    \
if volume_before <= 0:\n        \
raise ValueError(\"volume must be positive\")\n    \
return volume_after / volume_before\n\n\
for batch in batches:\n    \
print(batch.date, round(rise_ratio(batch.v0, batch.v1), 2))\n\n\
What she learned can be summed up in a few rules:\n\
1. Measure by weight, never by volume.\n\
2. Temperature matters more than the recipe.\n\
3. A wet dough is harder to shape but bakes a more open crumb.\n\
4. Keep notes, because memory flatters.\n\n\
By spring the bakery sold twice as many loaves, and a local newspaper ran a story under the headline \
\"Engineer turns precision into pastry\". Tomas framed it and hung it above the till, next to a faded photograph \
of the freighter he had served on for twenty-two years, crossing the North Atlantic between Rotterdam and Halifax. \
Asked whether he missed the sea, he shrugged: an engine room and a bakery, he said, are both hot, loud before \
dawn, and unforgiving of anyone who does not check the gauges.";

/// Calibrate `exec`'s fp8 scales over [`CALIBRATION_TEXT`] (see the module header): returns the
/// scales set, None when the cache is not fp8 or the checkpoint's scales are already in use.
pub fn calibrate_kv_scales(exec: &mut Executor, tok: &Tokenizer, max_chunk: usize) -> Result<Option<KvScales>, EngineError> {
    if exec.kv_scales().is_some() {
        tracing::debug!("fp8 KV scales: the checkpoint's are in use; no calibration");
        return Ok(None);
    }
    if exec.kv_cache_type() != crate::KvCacheType::Fp8E4M3 {
        return Ok(None);
    }
    let tokens = tok.encode(CALIBRATION_TEXT, tok.add_bos(), false).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    Ok(exec.calibrate_kv_scales(&tokens, max_chunk)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_bad_values_name_the_valid_ones() {
        assert_eq!("AUTO".parse::<KvScalesMode>(), Ok(KvScalesMode::Auto));
        assert_eq!(" checkpoint ".parse::<KvScalesMode>(), Ok(KvScalesMode::Checkpoint));
        let e = "1.0".parse::<KvScalesMode>().unwrap_err();
        assert!(e.contains("'1.0'") && e.contains("auto|checkpoint"), "{e}");
        let env =
            |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(kv_scales_from_vars(env(&[])).unwrap(), None);
        assert_eq!(kv_scales_from_vars(env(&[("ROCMFORGE_KV_SCALES", "auto")])).unwrap(), Some(KvScalesMode::Auto));
        let e = kv_scales_from_vars(env(&[("ROCMFORGE_KV_SCALES", "max")])).unwrap_err().to_string();
        assert!(e.contains("ROCMFORGE_KV_SCALES") && e.contains("'max'"), "{e}");
    }
}
