//! What this host reads of every op: the slot table behind the unused-slot check and the
//! capability query (`supports`), kept in one place so the two cannot disagree.
//!
//! An op arrives as a fixed [`RfOp`] (inputs 0..4, integer and float parameters 0..8) plus an
//! optional size-prefixed [`RfOpExt`] (inputs 4..8, parameters 8..16). [`OpRecord::read`] merges
//! them into one view; [`check_slots`] then refuses any slot that the op's [`OpSpec`] does not
//! read unless it is `NO_NODE` / 0, and any enumerated parameter value the host does not know.
//! Why: a plugin built for a newer host may set a parameter (a chunked-attention size, a new
//! gating mode) that an older host would otherwise ignore, computing wrong logits silently.
//!
//! ```text
//!   RfOp    inputs[0..4]  iparams[0..8]   fparams[0..8]
//!   RfOpExt inputs[4..8]  iparams[8..16]  fparams[8..16]   (struct_size first; bytes past the
//!                                                           fields this host knows must be 0)
//! ```
//!
//! Adding an op or a parameter (append-only): give the op code its row in [`SPECS`] (or raise a
//! count / add an enumerated value), decode it in `graph.rs`, and the check and `supports`
//! follow. Modelled on Vulkan's `pNext` chains (sType + size, unknown extensions refused) and
//! the ggml op table.

use rocmforge_abi::{cap, moe_act, moe_gating, moe_group, op, output_kind, pool, rope_yarn, rows_src, RfOp, RfOpExt, NO_NODE};

/// Slots of the merged view.
pub const MAX_INPUTS: usize = 8;
pub const MAX_IPARAMS: usize = 16;
pub const MAX_FPARAMS: usize = 16;

/// An enumerated integer parameter: its slot, what it means, and the values this host accepts.
pub struct EnumParam {
    pub slot: usize,
    pub what: &'static str,
    pub values: &'static [(i64, &'static str)],
}

/// What the host reads of one op: the first `inputs` inputs, `iparams` integer and `fparams`
/// float parameters (slots past these must be unused).
pub struct OpSpec {
    pub code: u32,
    pub name: &'static str,
    pub inputs: usize,
    pub iparams: usize,
    pub fparams: usize,
    pub enums: &'static [EnumParam],
}

const fn spec(code: u32, name: &'static str, inputs: usize, iparams: usize, fparams: usize) -> OpSpec {
    OpSpec { code, name, inputs, iparams, fparams, enums: &[] }
}

const ROWS_SRC: EnumParam = EnumParam {
    slot: 0,
    what: "row source",
    values: &[(rows_src::TOKENS, "tokens"), (rows_src::POSITIONS, "positions"), (rows_src::CONSTANT, "constant")],
};
const ROPE_MODE: EnumParam = EnumParam { slot: 3, what: "rope mode", values: &[(0, "interleaved pairs"), (2, "NeoX halves")] };
const ROPE_YARN: EnumParam =
    EnumParam { slot: 5, what: "YaRN correction range", values: &[(rope_yarn::TRUNCATED, "whole dims"), (rope_yarn::EXACT, "exact")] };
const OUTPUT_KIND: EnumParam =
    EnumParam { slot: 0, what: "output kind", values: &[(output_kind::LOGITS, "logits"), (output_kind::EMBEDDING, "embedding")] };
const POOL_MODE: EnumParam =
    EnumParam { slot: 0, what: "pool mode", values: &[(pool::MEAN, "mean"), (pool::CLS, "cls"), (pool::LAST, "last")] };
const MOE_GATING: EnumParam = EnumParam {
    slot: 1,
    what: "MoE gating",
    values: &[
        (moe_gating::SOFTMAX, "softmax"),
        (moe_gating::SOFTMAX_NORM, "softmax + renormalised top-k"),
        (moe_gating::SIGMOID, "sigmoid"),
        (moe_gating::SIGMOID_NORM, "sigmoid + renormalised top-k"),
    ],
};
const MOE_GROUP: EnumParam =
    EnumParam { slot: 4, what: "MoE group score", values: &[(moe_group::MAX, "max"), (moe_group::TOP2_SUM, "sum of the top two")] };
const MOE_ACT: EnumParam = EnumParam {
    slot: 1,
    what: "MoE activation",
    values: &[(moe_act::SWIGLU, "swiglu"), (moe_act::GEGLU, "geglu"), (moe_act::SWIGLU_OAI, "clamped swiglu (gpt-oss)")],
};

/// Every op this host knows, with the slots it reads (the header's slot table).
pub static SPECS: &[OpSpec] = &[
    spec(op::WEIGHT, "WEIGHT", 0, 0, 0),
    // iparams[1] (the constant id) is read only for RF_ROWS_SRC_CONSTANT: see `used_iparams`.
    OpSpec { enums: &[ROWS_SRC], ..spec(op::GET_ROWS, "GET_ROWS", 1, 2, 0) },
    spec(op::RMS_NORM, "RMS_NORM", 2, 1, 1),
    spec(op::LAYER_NORM, "LAYER_NORM", 3, 0, 1),
    spec(op::MATMUL, "MATMUL", 3, 0, 0),
    spec(op::ADD, "ADD", 2, 0, 0),
    spec(op::MUL, "MUL", 2, 0, 0),
    spec(op::SCALE, "SCALE", 1, 0, 1),
    // Appended: iparams[5] (YaRN correction range).
    OpSpec { enums: &[ROPE_MODE, ROPE_YARN], ..spec(op::ROPE, "ROPE", 2, 6, 6) },
    // Appended: input 3 (attention sinks).
    spec(op::ATTENTION, "ATTENTION", 4, 7, 2),
    spec(op::SILU, "SILU", 1, 0, 0),
    spec(op::GELU, "GELU", 1, 0, 0),
    spec(op::GELU_ERF, "GELU_ERF", 1, 0, 0),
    spec(op::SWIGLU, "SWIGLU", 2, 0, 0),
    spec(op::GEGLU, "GEGLU", 2, 0, 0),
    spec(op::SOFTCAP, "SOFTCAP", 1, 0, 1),
    // Appended: iparams[2] (head width: a per-head view).
    spec(op::VIEW, "VIEW", 1, 3, 0),
    spec(op::OUTPUT_ROWS, "OUTPUT_ROWS", 1, 0, 0),
    OpSpec { enums: &[OUTPUT_KIND], ..spec(op::OUTPUT, "OUTPUT", 1, 1, 0) },
    OpSpec { enums: &[POOL_MODE], ..spec(op::POOL, "POOL", 1, 1, 0) },
    spec(op::L2_NORM, "L2_NORM", 1, 0, 1),
    // Appended: input 1 (selection bias), iparams[2..5] (expert groups, groups kept, group
    // score), fparams[0] (weight scale), gating values SIGMOID / SIGMOID_NORM.
    OpSpec { enums: &[MOE_GATING, MOE_GROUP], ..spec(op::MOE_ROUTE, "MOE_ROUTE", 2, 5, 1) },
    // Appended: extension inputs 4, 5 (expert biases), fparams 0, 1 (SWIGLU_OAI's alpha, limit).
    OpSpec { enums: &[MOE_ACT], ..spec(op::MOE_GATE_UP, "MOE_GATE_UP", 6, 2, 2) },
    // Appended: input 3 (expert bias).
    spec(op::MOE_DOWN, "MOE_DOWN", 4, 1, 0),
    spec(op::SIGMOID, "SIGMOID", 1, 0, 0),
    spec(op::HEAD_MATMUL, "HEAD_MATMUL", 2, 0, 0),
    spec(op::CONCAT, "CONCAT", 2, 1, 0),
    spec(op::LATENT_ATTENTION, "LATENT_ATTENTION", 2, 7, 2),
];

/// The spec of an op code, if this host knows it.
pub fn spec_of(code: u32) -> Option<&'static OpSpec> {
    SPECS.iter().find(|s| s.code == code)
}

/// The name of an op code for messages ("ATTENTION", or "op 77" when unknown).
pub fn op_name(code: u32) -> String {
    spec_of(code).map(|s| s.name.to_string()).unwrap_or_else(|| format!("op {code}"))
}

/// Integer parameters read for this particular op: GET_ROWS reads its id slot only for a
/// constant source, so a plugin cannot smuggle a value through it otherwise.
fn used_iparams(s: &OpSpec, r: &OpRecord) -> usize {
    if s.code == op::GET_ROWS && r.iparams[0] != rows_src::CONSTANT {
        1
    } else {
        s.iparams
    }
}

/// One op with the base and extension slots merged.
#[derive(Clone, Debug, PartialEq)]
pub struct OpRecord {
    pub code: u32,
    pub inputs: [u32; MAX_INPUTS],
    pub iparams: [i64; MAX_IPARAMS],
    pub fparams: [f32; MAX_FPARAMS],
}

impl OpRecord {
    /// Merge a base record and an (already validated, see `host_api`) extension.
    pub fn read(raw: &RfOp, ext: Option<&RfOpExt>) -> OpRecord {
        let ext = ext.copied().unwrap_or_default();
        let mut r = OpRecord { code: raw.code, inputs: [NO_NODE; MAX_INPUTS], iparams: [0; MAX_IPARAMS], fparams: [0.0; MAX_FPARAMS] };
        r.inputs[..4].copy_from_slice(&raw.inputs);
        r.inputs[4..].copy_from_slice(&ext.inputs);
        r.iparams[..8].copy_from_slice(&raw.iparams);
        r.iparams[8..].copy_from_slice(&ext.iparams);
        r.fparams[..8].copy_from_slice(&raw.fparams);
        r.fparams[8..].copy_from_slice(&ext.fparams);
        r
    }
}

/// Refuse a record that sets a slot this host does not read for its op, an enumerated value it
/// does not know, or a tensor name on an op other than WEIGHT. The message names op and slot.
pub fn check_slots(r: &OpRecord, tensor: &str) -> Result<(), String> {
    let s = spec_of(r.code).ok_or_else(|| format!("unknown op code {} (a plugin built for a newer host?)", r.code))?;
    let newer = "this host does not read it for this op (a plugin built for a newer host? ask `supports` first); unused slots must be";
    if let Some(i) = (s.inputs..MAX_INPUTS).find(|&i| r.inputs[i] != NO_NODE) {
        return Err(format!("{} inputs[{i}] = {}: {newer} RF_NO_NODE", s.name, r.inputs[i]));
    }
    if let Some(i) = (used_iparams(s, r)..MAX_IPARAMS).find(|&i| r.iparams[i] != 0) {
        return Err(format!("{} iparams[{i}] = {}: {newer} 0", s.name, r.iparams[i]));
    }
    // `!= 0.0` lets -0.0 through (it is zero) and refuses NaN.
    if let Some(i) = (s.fparams..MAX_FPARAMS).find(|&i| r.fparams[i] != 0.0) {
        return Err(format!("{} fparams[{i}] = {}: {newer} 0", s.name, r.fparams[i]));
    }
    for e in s.enums {
        let v = r.iparams[e.slot];
        if !e.values.iter().any(|(x, _)| *x == v) {
            let known: Vec<String> = e.values.iter().map(|(x, m)| format!("{x} = {m}")).collect();
            return Err(format!(
                "{} iparams[{}] ({}) = {v} is not supported by this host (supported: {})",
                s.name,
                e.slot,
                e.what,
                known.join(", ")
            ));
        }
    }
    if s.code != op::WEIGHT && !tensor.is_empty() {
        return Err(format!("{} takes no tensor name, got '{tensor}' (only WEIGHT names a tensor)", s.name));
    }
    Ok(())
}

/// The answer to a capability query ([`rocmforge_abi::cap`]).
pub fn supports(code: u32, what: u32, slot: u32, value: i64) -> bool {
    let Some(s) = spec_of(code) else { return false };
    let slot = slot as usize;
    match what {
        cap::OP => true,
        cap::INPUT => slot < s.inputs,
        cap::IPARAM => slot < s.iparams,
        cap::FPARAM => slot < s.fparams,
        cap::IPARAM_VALUE => match s.enums.iter().find(|e| e.slot == slot) {
            Some(e) => e.values.iter().any(|(x, _)| *x == value),
            None => slot < s.iparams,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(code: u32) -> OpRecord {
        OpRecord { code, inputs: [NO_NODE; MAX_INPUTS], iparams: [0; MAX_IPARAMS], fparams: [0.0; MAX_FPARAMS] }
    }

    #[test]
    fn every_abi_op_code_has_a_spec_and_codes_are_unique() {
        for code in 1..=op::LATENT_ATTENTION {
            assert!(spec_of(code).is_some(), "op code {code} has no spec");
        }
        let mut codes: Vec<u32> = SPECS.iter().map(|s| s.code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), SPECS.len());
        for s in SPECS {
            assert!(s.inputs <= MAX_INPUTS && s.iparams <= MAX_IPARAMS && s.fparams <= MAX_FPARAMS, "{}", s.name);
            for e in s.enums {
                assert!(e.slot < s.iparams, "{}: enumerated slot {} is not read", s.name, e.slot);
            }
        }
    }

    #[test]
    fn unused_slots_are_refused_by_name() {
        let mut r = rec(op::ATTENTION);
        r.iparams[7] = 4096; // a newer host's chunked-attention size in the last free base slot
        assert_eq!(
            check_slots(&r, "").unwrap_err(),
            "ATTENTION iparams[7] = 4096: this host does not read it for this op (a plugin built for a newer host? ask `supports` first); unused slots must be 0"
        );
        let mut r = rec(op::SCALE);
        r.fparams[1] = 0.5;
        assert!(check_slots(&r, "").unwrap_err().starts_with("SCALE fparams[1] = 0.5:"));
        let mut r = rec(op::SILU);
        r.inputs[5] = 3; // an extension input
        assert!(check_slots(&r, "").unwrap_err().starts_with("SILU inputs[5] = 3:"));
        let mut r = rec(op::MATMUL);
        r.iparams[12] = 1;
        assert!(check_slots(&r, "").unwrap_err().starts_with("MATMUL iparams[12] = 1:"));
        let mut r = rec(op::SCALE);
        r.fparams[0] = 2.0; // used slot
        r.fparams[3] = -0.0; // negative zero is zero
        assert_eq!(check_slots(&r, ""), Ok(()));
        r.fparams[3] = f32::NAN;
        assert!(check_slots(&r, "").is_err(), "NaN is not an unused value");
    }

    #[test]
    fn get_rows_id_slot_is_read_only_for_a_constant_source() {
        let mut r = rec(op::GET_ROWS);
        r.iparams[1] = 7;
        assert!(check_slots(&r, "").unwrap_err().starts_with("GET_ROWS iparams[1] = 7:"));
        r.iparams[0] = rows_src::CONSTANT;
        assert_eq!(check_slots(&r, ""), Ok(()));
    }

    #[test]
    fn enumerated_values_and_tensor_names_are_checked() {
        let mut r = rec(op::MOE_ROUTE);
        r.iparams[0] = 2;
        r.iparams[1] = 7; // a gating a newer host may define
        assert_eq!(
            check_slots(&r, "").unwrap_err(),
            "MOE_ROUTE iparams[1] (MoE gating) = 7 is not supported by this host (supported: 0 = softmax, 1 = softmax + renormalised top-k, 2 = sigmoid, 3 = sigmoid + renormalised top-k)"
        );
        r.iparams[1] = moe_gating::SIGMOID_NORM;
        r.iparams[4] = 2; // a group score this host does not know
        assert!(check_slots(&r, "").unwrap_err().starts_with("MOE_ROUTE iparams[4] (MoE group score) = 2 is not supported"));
        assert_eq!(
            check_slots(&rec(op::ADD), "blk.0.x.weight").unwrap_err(),
            "ADD takes no tensor name, got 'blk.0.x.weight' (only WEIGHT names a tensor)"
        );
        assert_eq!(check_slots(&rec(op::WEIGHT), "blk.0.x.weight"), Ok(()));
        assert!(check_slots(&rec(999), "").unwrap_err().contains("unknown op code 999"));
    }

    #[test]
    fn supports_answers_from_the_same_table() {
        assert!(supports(op::ATTENTION, cap::OP, 0, 0));
        assert!(!supports(999, cap::OP, 0, 0));
        assert!(supports(op::ATTENTION, cap::IPARAM, 6, 0));
        assert!(!supports(op::ATTENTION, cap::IPARAM, 7, 0));
        assert!(supports(op::MOE_GATE_UP, cap::INPUT, 5, 0), "expert biases in extension inputs 4, 5");
        assert!(!supports(op::MOE_GATE_UP, cap::INPUT, 6, 0));
        assert!(supports(op::MOE_GATE_UP, cap::FPARAM, 1, 0) && !supports(op::MOE_GATE_UP, cap::FPARAM, 2, 0));
        assert!(supports(op::MOE_GATE_UP, cap::IPARAM_VALUE, 1, moe_act::SWIGLU_OAI));
        assert!(supports(op::ATTENTION, cap::INPUT, 3, 0), "attention sinks");
        assert!(supports(op::MOE_DOWN, cap::INPUT, 3, 0) && !supports(op::MOE_DOWN, cap::INPUT, 4, 0));
        assert!(supports(op::ROPE, cap::IPARAM_VALUE, 5, rope_yarn::EXACT) && !supports(op::ROPE, cap::IPARAM_VALUE, 5, 2));
        assert!(supports(op::ROPE, cap::FPARAM, 5, 0) && !supports(op::ROPE, cap::FPARAM, 6, 0));
        assert!(supports(op::ROPE, cap::IPARAM_VALUE, 3, 2) && !supports(op::ROPE, cap::IPARAM_VALUE, 3, 1));
        assert!(supports(op::MOE_ROUTE, cap::IPARAM_VALUE, 1, moe_gating::SOFTMAX_NORM));
        assert!(supports(op::MOE_ROUTE, cap::IPARAM_VALUE, 1, moe_gating::SIGMOID_NORM));
        assert!(!supports(op::MOE_ROUTE, cap::IPARAM_VALUE, 1, 4));
        assert!(supports(op::MOE_ROUTE, cap::INPUT, 1, 0) && !supports(op::MOE_ROUTE, cap::INPUT, 2, 0), "selection bias");
        assert!(supports(op::MOE_ROUTE, cap::IPARAM_VALUE, 4, moe_group::TOP2_SUM) && supports(op::MOE_ROUTE, cap::FPARAM, 0, 0));
        assert!(supports(op::HEAD_MATMUL, cap::OP, 0, 0) && supports(op::LATENT_ATTENTION, cap::IPARAM, 6, 0));
        assert!(supports(op::CONCAT, cap::IPARAM, 0, 0) && !supports(op::CONCAT, cap::IPARAM, 1, 0));
        assert!(supports(op::VIEW, cap::IPARAM_VALUE, 1, 12345), "a non-enumerated read slot takes any value");
        assert!(supports(op::VIEW, cap::IPARAM, 2, 0), "head width (appended)");
        assert!(!supports(op::VIEW, cap::IPARAM_VALUE, 3, 0));
        assert!(!supports(op::ADD, 99, 0, 0), "an unknown query kind is answered no");
    }
}
