"""LoRA adapters: the payload and its folder, the chunked wire form, the receiving spool, and base-model identity.

The learner serialises an adapter once (an `AdapterPayload`, checksummed once), streams it to
every generator (`wire.encode_chunks`), and generators read and verify it into a staging file
(`receive.receive_adapter`, spooled by `spool.Spool`) before moving it into place
(`payload.write_adapter_dir`) and loading it into their engine. `identity.base_model_id`
fingerprints a model folder so that an adapter trained on one base model is never served on another.
"""

from rlfleet.adapters.identity import base_model_id, resolve_model_dir
from rlfleet.adapters.payload import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterPayload,
    adapter_from_dir,
    checksum,
    write_adapter_dir,
)
from rlfleet.adapters.receive import AdapterAssembler, ReceivedAdapter, receive_adapter
from rlfleet.adapters.spool import SPARE_PREFIX, keep_as_spare
from rlfleet.adapters.weights import check_lora_config, check_safetensors, check_weights
from rlfleet.adapters.wire import DEFAULT_CHUNK_BYTES, decode_chunk, encode_chunks, load_adapter_method, to_chunks

__all__ = [
    "CONFIG_FILE", "DEFAULT_CHUNK_BYTES", "SPARE_PREFIX", "WEIGHTS_FILE", "AdapterAssembler", "AdapterPayload",
    "ReceivedAdapter", "adapter_from_dir", "base_model_id", "check_lora_config", "check_safetensors", "check_weights",
    "checksum", "decode_chunk", "encode_chunks", "keep_as_spare", "load_adapter_method", "receive_adapter",
    "resolve_model_dir", "to_chunks", "write_adapter_dir",
]
