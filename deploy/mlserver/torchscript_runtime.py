"""A generic MLServer runtime that serves one TorchScript file over KServe V2.

Model settings (model-settings.json) name the file in `parameters.uri` and
declare exactly one input and one output tensor in `inputs` / `outputs`
(name, datatype, shape with -1 for a free dimension). The request's one
input is decoded with MLServer's NumpyCodec in the datatype the request
declares, checked against that declaration, passed unchanged to the
module's forward (no pre- or post-processing), and the result comes back as
one FP32 tensor named after the declared output (`output`).

Inference runs on the CPU, one intra-op thread per forward, off the event
loop (torch releases the GIL while it computes).
"""

import asyncio

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

# V2 datatypes this runtime accepts, with their numpy dtypes.
_DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class TorchScriptRuntime(MLModel):
    async def load(self) -> bool:
        settings = self.settings
        if len(settings.inputs) != 1 or len(settings.outputs) != 1:
            raise MLServerError(
                f"model {settings.name}: model-settings.json must declare exactly "
                f"one input and one output (has {len(settings.inputs)} and "
                f"{len(settings.outputs)})",
                status_code=500,
            )
        self._input = settings.inputs[0]
        self._output = settings.outputs[0]
        if self._input.datatype not in _DTYPES:
            raise MLServerError(
                f"model {settings.name}: unsupported input datatype "
                f"{self._input.datatype}",
                status_code=500,
            )
        path = await get_model_uri(settings)
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set by an earlier model in this process
        self._module = torch.jit.load(path, map_location="cpu").eval()
        return True

    def _check(self, name: str, datatype: str, shape) -> None:
        want = self._input
        if name != want.name:
            raise InferenceError(
                f"model {self.name}: unknown input {name!r}, expected {want.name!r}"
            )
        if datatype != want.datatype:
            raise InferenceError(
                f"model {self.name}: input {name!r} has datatype {datatype}, "
                f"expected {want.datatype}"
            )
        shape = list(shape)
        ok = len(shape) == len(want.shape) and all(
            w == -1 or s == w for s, w in zip(shape, want.shape)
        )
        if not ok or any(s < 0 for s in shape):
            raise InferenceError(
                f"model {self.name}: input {name!r} has shape {shape}, "
                f"expected {list(want.shape)} (-1: any size)"
            )

    def _forward(self, array: np.ndarray) -> np.ndarray:
        # Grad mode is per thread: set it in the thread that runs forward.
        with torch.inference_mode():
            result = self._module(torch.from_numpy(array))
        if not isinstance(result, torch.Tensor):
            raise InferenceError(
                f"model {self.name}: forward returned {type(result).__name__}, "
                "not a tensor"
            )
        return result.to(torch.float32).contiguous().numpy()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise InferenceError(
                f"model {self.name}: expected exactly one input "
                f"({self._input.name!r}), got {len(payload.inputs)}"
            )
        request_input = payload.inputs[0]
        self._check(request_input.name, request_input.datatype, request_input.shape)
        try:
            array = NumpyCodec.decode_input(request_input)
        except Exception as err:  # malformed data: wrong element count, ...
            raise InferenceError(
                f"model {self.name}: cannot decode input {request_input.name!r}: {err}"
            ) from err
        if array.dtype != _DTYPES[self._input.datatype]:
            array = array.astype(_DTYPES[self._input.datatype])
        array = np.ascontiguousarray(array)
        try:
            out = await asyncio.to_thread(self._forward, array)
        except MLServerError:
            raise
        except Exception as err:  # the module refused the input
            raise InferenceError(f"model {self.name}: forward failed: {err}") from err
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(self._output.name, out)],
        )
