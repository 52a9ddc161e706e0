//! A dishonest client, for testing aggregators (the unit tests and the network test
//! of a rogue member): Prio3 over the honest circuit, but it encodes whatever field
//! elements it is given instead of a checked measurement, then shards and proves them
//! with the real Prio3. Its shares have the honest shape; only the validity proof can
//! catch them. Nothing in the node uses it; anyone could write it, and an aggregator's
//! operator may use it to check theirs.

use prio::codec::Encode;
use prio::field::Field128;
use prio::flp::gadgets::{Mul, ParallelSum};
use prio::flp::types::MultihotCountVec;
use prio::flp::{Flp, FlpError, Gadget, Type};
use prio::vdaf::prio3::Prio3;
use prio::vdaf::xof::XofTurboShake128;

use super::{ClientReport, ReportId, RoundV1, SecaggError, ShareV1, chunk_length, report_err};

type Inner = MultihotCountVec<Field128, ParallelSum<Field128, Mul>>;

/// The honest circuit with an unchecked encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cheat(Inner);

impl Flp for Cheat {
    type Field = Field128;
    fn gadget(&self) -> Vec<Box<dyn Gadget<Field128>>> {
        self.0.gadget()
    }
    fn num_gadgets(&self) -> usize {
        self.0.num_gadgets()
    }
    fn valid(
        &self,
        g: &mut Vec<Box<dyn Gadget<Field128>>>,
        input: &[Field128],
        joint_rand: &[Field128],
        num_shares: usize,
    ) -> Result<Vec<Field128>, FlpError> {
        self.0.valid(g, input, joint_rand, num_shares)
    }
    fn input_len(&self) -> usize {
        self.0.input_len()
    }
    fn proof_len(&self) -> usize {
        self.0.proof_len()
    }
    fn verifier_len(&self) -> usize {
        self.0.verifier_len()
    }
    fn joint_rand_len(&self) -> usize {
        self.0.joint_rand_len()
    }
    fn eval_output_len(&self) -> usize {
        self.0.eval_output_len()
    }
    fn prove_rand_len(&self) -> usize {
        self.0.prove_rand_len()
    }
}

impl Type for Cheat {
    type Measurement = Vec<u128>;
    type AggregateResult = Vec<u128>;
    fn encode_measurement(&self, m: &Vec<u128>) -> Result<Vec<Field128>, FlpError> {
        Ok(m.iter().map(|v| Field128::from(*v)).collect())
    }
    fn truncate(&self, input: Vec<Field128>) -> Result<Vec<Field128>, FlpError> {
        self.0.truncate(input)
    }
    fn decode_result(&self, data: &[Field128], n: usize) -> Result<Vec<u128>, FlpError> {
        self.0.decode_result(data, n)
    }
    fn output_len(&self) -> usize {
        self.0.output_len()
    }
}

fn inner(r: &RoundV1) -> Result<Inner, SecaggError> {
    Inner::new(r.len(), r.params.max_weight(), chunk_length(r.len())).map_err(|e| SecaggError::Params(e.to_string()))
}

/// Shards and proves `raw` (the circuit's input: one element per vocabulary item, then
/// the weight's bits) as if it were a valid encoding.
pub fn shard_raw(r: &RoundV1, raw: Vec<u128>, report: ReportId) -> Result<ClientReport, SecaggError> {
    use prio::vdaf::Client;
    // Prio3MultihotCountVec's algorithm id (draft-irtf-cfrg-vdaf): the honest
    // aggregators' verification binds it, so the shares pass every check but the proof.
    let vdaf: Prio3<Cheat, XofTurboShake128, 32> =
        Prio3::new(2, 1, 0x0000_0005, Cheat(inner(r)?)).map_err(|e| SecaggError::Params(e.to_string()))?;
    let (public, inputs) = vdaf.shard(&r.context(), &raw, &report).map_err(|e| report_err(&report, e))?;
    let public_share = public.get_encoded().map_err(|e| report_err(&report, e))?;
    let mut shares = Vec::with_capacity(2);
    for input in inputs.iter().take(2) {
        shares.push(ShareV1 {
            round: r.id(),
            report,
            public_share: public_share.clone(),
            input_share: input.get_encoded().map_err(|e| report_err(&report, e))?,
        });
    }
    let helper = shares.pop().ok_or_else(|| report_err(&report, "too few shares"))?;
    let leader = shares.pop().ok_or_else(|| report_err(&report, "too few shares"))?;
    Ok(ClientReport { leader, helper })
}

/// The honest encoding of a measurement: the bits, then the weight in the circuit's
/// offset binary form (from the honest type).
pub fn encoded(r: &RoundV1, bits: &[bool]) -> Result<Vec<u128>, SecaggError> {
    let encoded = inner(r)?.encode_measurement(&bits.to_vec()).map_err(|e| SecaggError::Params(e.to_string()))?;
    Ok(encoded.into_iter().map(u128::from).collect())
}
