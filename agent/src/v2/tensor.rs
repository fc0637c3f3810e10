//! V2 tensors on the wire ↔ [`RawTensor`]: raw contents or typed
//! `contents`, checked for name, datatype, shape and size before anything
//! is allocated from a client's word.

use crate::infer::{DataType, RawTensor};
use proto::inference::model_infer_request::InferInputTensor;
use proto::inference::model_infer_response::InferOutputTensor;
use proto::inference::{InferTensorContents, ModelInferRequest, ModelInferResponse};

/// The one input tensor of every model.
pub const INPUT_NAME: &str = "input";
/// The one output tensor of every model.
pub const OUTPUT_NAME: &str = "output";

/// Whether `shape` fits `want`, where `-1` in `want` is any size >= 1.
pub fn fits(shape: &[i64], want: &[i64]) -> bool {
    shape.len() == want.len()
        && shape
            .iter()
            .zip(want)
            .all(|(&s, &w)| if w < 0 { s >= 1 } else { s == w })
}

/// The request's one input tensor as bytes: from `raw_input_contents` or
/// the typed `contents`; at most `max_bytes` of data.
pub fn input_from_request(req: &ModelInferRequest, max_bytes: usize) -> Result<RawTensor, String> {
    let [input] = req.inputs.as_slice() else {
        return Err(format!(
            "expected exactly one input tensor ({INPUT_NAME:?}), got {}",
            req.inputs.len()
        ));
    };
    if input.name != INPUT_NAME {
        return Err(format!(
            "unknown input tensor {:?} (the model's input is {INPUT_NAME:?})",
            input.name
        ));
    }
    let datatype = DataType::parse(&input.datatype)
        .ok_or_else(|| format!("unsupported datatype {:?}", input.datatype))?;
    if input.shape.iter().any(|&d| d < 0) {
        return Err(format!("invalid shape {:?}", input.shape));
    }
    let elements = RawTensor::elements(&input.shape);
    let bytes = elements
        .and_then(|n| n.checked_mul(datatype.size()))
        .filter(|&b| b <= max_bytes)
        .ok_or_else(|| {
            format!(
                "input of shape {:?} ({}) exceeds the limit of {max_bytes} bytes",
                input.shape, input.datatype
            )
        })?;
    let data = match (req.raw_input_contents.as_slice(), &input.contents) {
        ([raw], None) => raw.clone(),
        ([_], Some(_)) => {
            return Err("the input has both raw_input_contents and typed contents".into())
        }
        ([], Some(c)) => typed_bytes(datatype, c, bytes / datatype.size())?,
        ([], None) => return Err("the input has no contents".into()),
        (raw, _) => {
            return Err(format!(
                "{} raw_input_contents for one input tensor",
                raw.len()
            ))
        }
    };
    let t = RawTensor {
        datatype,
        shape: input.shape.clone(),
        data,
    };
    if t.data.len() != bytes {
        return Err(format!(
            "input of shape {:?} ({}) needs {bytes} bytes, got {}",
            t.shape,
            datatype.as_str(),
            t.data.len()
        ));
    }
    Ok(t)
}

/// Typed contents as raw bytes; the element count must be `elements`.
fn typed_bytes(
    datatype: DataType,
    c: &InferTensorContents,
    elements: usize,
) -> Result<Vec<u8>, String> {
    let count = |n: usize| {
        if n == elements {
            Ok(())
        } else {
            Err(format!(
                "{} contents hold {n} elements, the shape needs {elements}",
                datatype.as_str()
            ))
        }
    };
    match datatype {
        DataType::Uint8 => {
            count(c.uint_contents.len())?;
            c.uint_contents
                .iter()
                .map(|&v| u8::try_from(v).map_err(|_| format!("UINT8 element {v} out of range")))
                .collect()
        }
        DataType::Int64 => {
            count(c.int64_contents.len())?;
            Ok(c.int64_contents
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect())
        }
        DataType::Fp32 => {
            count(c.fp32_contents.len())?;
            Ok(c.fp32_contents
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect())
        }
    }
}

/// The request tensor carrying `t` (its bytes go in `raw_input_contents`).
pub fn input_tensor(t: &RawTensor) -> InferInputTensor {
    InferInputTensor {
        name: INPUT_NAME.into(),
        datatype: t.datatype.as_str().into(),
        shape: t.shape.clone(),
        ..Default::default()
    }
}

/// The response tensor describing `t` (its bytes go in `raw_output_contents`).
pub fn output_tensor(t: &RawTensor) -> InferOutputTensor {
    InferOutputTensor {
        name: OUTPUT_NAME.into(),
        datatype: t.datatype.as_str().into(),
        shape: t.shape.clone(),
        ..Default::default()
    }
}

/// The response's output tensor `name` (or its only one) as `FP32`
/// bytes, from raw or typed contents.
pub fn output_from_response(resp: &ModelInferResponse, name: &str) -> Result<RawTensor, String> {
    let index = resp
        .outputs
        .iter()
        .position(|o| o.name == name)
        .or_else(|| (resp.outputs.len() == 1).then_some(0))
        .ok_or_else(|| format!("the answer has no output tensor {name:?}"))?;
    let o = &resp.outputs[index];
    let datatype = DataType::parse(&o.datatype)
        .filter(|d| *d == DataType::Fp32)
        .ok_or_else(|| format!("output {:?} is {}, expected FP32", o.name, o.datatype))?;
    let data = if resp.raw_output_contents.is_empty() {
        let c = o
            .contents
            .as_ref()
            .ok_or_else(|| format!("output {:?} has no contents", o.name))?;
        c.fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    } else {
        resp.raw_output_contents
            .get(index)
            .cloned()
            .ok_or_else(|| format!("no raw contents for output {:?}", o.name))?
    };
    let t = RawTensor {
        datatype,
        shape: o.shape.clone(),
        data,
    };
    t.check_size()
        .map_err(|e| format!("output {:?}: {e}", o.name))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(datatype: &str, shape: Vec<i64>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: INPUT_NAME.into(),
                datatype: datatype.into(),
                shape,
                ..Default::default()
            }],
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_inputs_give_the_same_bytes() {
        let raw = request(
            "INT64",
            vec![1, 2],
            vec![[7i64, 9].map(i64::to_le_bytes).concat()],
        );
        let mut typed = request("INT64", vec![1, 2], vec![]);
        typed.inputs[0].contents = Some(InferTensorContents {
            int64_contents: vec![7, 9],
            ..Default::default()
        });
        let a = input_from_request(&raw, 1024).unwrap();
        assert_eq!(a, input_from_request(&typed, 1024).unwrap());
        assert_eq!(a.i64s(), vec![7, 9]);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let e = |r: ModelInferRequest| input_from_request(&r, 1024).unwrap_err();
        assert!(e(request("UINT8", vec![1, 4], vec![vec![0; 3]])).contains("needs 4 bytes"));
        assert!(e(request("FP16", vec![1], vec![vec![0; 2]])).contains("datatype"));
        assert!(e(request("UINT8", vec![1, -4], vec![vec![]])).contains("invalid shape"));
        assert!(e(request("UINT8", vec![1 << 40, 1 << 40], vec![])).contains("limit"));
        assert!(e(request("UINT8", vec![2], vec![])).contains("no contents"));
        let mut named = request("UINT8", vec![1], vec![vec![1]]);
        named.inputs[0].name = "x".into();
        assert!(e(named).contains("unknown input"));
        let mut big = request("UINT8", vec![2], vec![]);
        big.inputs[0].contents = Some(InferTensorContents {
            uint_contents: vec![1, 300],
            ..Default::default()
        });
        assert!(e(big).contains("out of range"));
    }

    #[test]
    fn shapes_fit_with_a_free_batch() {
        assert!(fits(&[3, 8, 8], &[-1, 8, 8]));
        assert!(!fits(&[0, 8, 8], &[-1, 8, 8]));
        assert!(!fits(&[1, 8], &[-1, 8, 8]));
        assert!(!fits(&[1, 8, 9], &[-1, 8, 8]));
    }

    #[test]
    fn outputs_read_from_raw_or_typed_contents() {
        let t = RawTensor::from_f32(vec![1, 2], &[0.5, -1.0]);
        let raw = ModelInferResponse {
            outputs: vec![output_tensor(&t)],
            raw_output_contents: vec![t.data.clone()],
            ..Default::default()
        };
        assert_eq!(output_from_response(&raw, OUTPUT_NAME).unwrap(), t);
        let mut typed = raw.clone();
        typed.raw_output_contents.clear();
        typed.outputs[0].contents = Some(InferTensorContents {
            fp32_contents: vec![0.5, -1.0],
            ..Default::default()
        });
        assert_eq!(output_from_response(&typed, OUTPUT_NAME).unwrap(), t);
        typed.outputs[0].shape = vec![1, 3];
        assert!(output_from_response(&typed, OUTPUT_NAME).is_err());
    }
}
