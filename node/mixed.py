"""The ``mixed`` celltype: JSON-able values, numpy arrays, and structures holding both.

A mixed value is stored in one of three ways, chosen by its *form* (its type tree):

* **pure-plain** (no arrays anywhere): ``json.dumps(value, sort_keys=True, indent=2)``
  plus ``\\n``, ASCII-escaped (unlike the plain celltype);
* **pure-binary** (a numpy array): the ``.npy`` file;
* **mixed-plain** (a dict or list with arrays inside)::

      b"\\x94SEAMLESS-MIXED" uint8 len(storage) storage uint32 len(form) form-JSON
      b"\\x93SEAMLESS" uint64 len(J) uint64 len(B) J B

  where ``B`` is every array's bytes (C order, native endianness) one after the other,
  in the order met walking the structure (dict keys sorted), and ``J`` is the JSON of
  ``[offsets, data]``: ``offsets`` the running end offsets in ``B`` (starting at 0),
  ``data`` the structure with each array replaced by ``0``.

The form and the stream follow Seamless 1.x exactly, for arrays of booleans, integers,
floats and byte strings; structured (record) dtypes and numpy scalars of type void are
refused with a clear error.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from typing import Any

import numpy as np

from .celltypes import CelltypeError

MAGIC_NUMPY = b"\x93NUMPY"
MAGIC_SEAMLESS = b"\x93SEAMLESS"
MAGIC_SEAMLESS_MIXED = b"\x94SEAMLESS-MIXED"

_INT_TYPES = (int, np.integer)
_FLOAT_TYPES = (float, np.floating)
_SCALARS = (type(None), bool, str, int, float, np.integer, np.floating)
_PLAIN, _BINARY, _MIXED = "pure-plain", "pure-binary", "mixed-plain"
_SCALAR_FORMS = ("string", "integer", "number", "boolean", "null")

Form = Any  # str for scalars, dict otherwise


def as_array(value: Any) -> np.ndarray:
    return np.array(value)


# ------------------------------------------------------------------------------ forms


def _scalar_form(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, _INT_TYPES):
        return "integer"
    if isinstance(value, _FLOAT_TYPES):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null"


def _dtype_form(dt: np.dtype) -> dict[str, Any]:
    if dt.fields is not None or dt.subdtype is not None:
        raise CelltypeError(f"arrays with structured dtype {dt} are not supported in mixed cells")
    if dt.kind == "b":
        kind = "boolean"
    elif dt.kind in "iu":
        kind = "integer"
    elif dt.kind == "f":
        kind = "number"
    elif dt.kind in "SU":
        kind = "string"
    else:
        raise CelltypeError(f"arrays of dtype {dt} cannot be stored in a mixed cell")
    form: dict[str, Any] = {"type": kind, "bytesize": dt.itemsize}
    if kind == "integer":
        form["unsigned"] = dt.kind == "u"
    return form


def _contiguous(arr: np.ndarray) -> bool:
    if not arr.flags["C_CONTIGUOUS"]:
        return False
    stride = arr.itemsize
    for n in range(arr.ndim - 1, -1, -1):
        if arr.strides[n] != stride:
            return False
        stride *= arr.shape[n]
    return True


def _with_storage(form: Form, storage: str) -> dict[str, Any]:
    if isinstance(form, str):
        form = {"type": form}
    form["storage"] = storage
    return form  # type: ignore[no-any-return]


def get_form(value: Any) -> tuple[str, Form]:
    """(storage, form) of a value, as Seamless computes them."""
    if isinstance(value, bytes):
        value = np.array(value)
    if isinstance(value, _SCALARS):
        return _PLAIN, _scalar_form(value)
    if isinstance(value, np.ndarray):
        if not value.dtype.isnative:
            raise CelltypeError("arrays must have native byte order to be stored")
        form = {"type": "array", "items": _dtype_form(value.dtype), "identical": True}
        form["shape"] = value.shape
        form["contiguous"] = _contiguous(value)
        if not form["contiguous"]:
            form["strides"] = value.strides
        return _BINARY, form
    if isinstance(value, (list, tuple)):
        storage, items, identical = _list_items(value)
        return storage, {"type": "array", "items": items, "identical": identical, "shape": (len(value),)}
    if isinstance(value, dict):
        return _dict_form(value)
    raise CelltypeError(f"a value of type {type(value).__name__} cannot be stored in a mixed cell")


def _list_items(value: list[Any] | tuple[Any, ...]) -> tuple[str, Any, bool]:
    storages, forms = [], []
    for item in value:
        s, f = get_form(item)
        storages.append(s)
        forms.append(f)
    if not forms:
        return _PLAIN, None, True
    different = len(set(storages)) > 1 or any(f != forms[0] for f in forms[1:])
    if different:
        storage = _PLAIN if set(storages) == {_PLAIN} else _MIXED
        for n, s in enumerate(storages):
            if s != _PLAIN:
                forms[n] = _with_storage(forms[n], s)
        return storage, forms, False
    if storages[0] == _PLAIN:
        return _PLAIN, forms[0], True
    return _MIXED, _with_storage(forms[0], storages[0]), True


def _dict_form(value: dict[Any, Any]) -> tuple[str, Form]:
    form: dict[str, Any] = {"type": "object"}
    if not value:
        return _PLAIN, form
    props: dict[Any, Any] = {}
    form["properties"] = props
    storages = {}
    for k, v in value.items():
        storages[k], props[k] = get_form(v)
    if set(storages.values()) == {_PLAIN}:
        return _PLAIN, form
    for k, s in storages.items():
        if s != _PLAIN:
            props[k] = _with_storage(props[k], s)
    return _MIXED, form


# -------------------------------------------------------------------------- serialize


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (np.bytes_, np.str_)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _npy(value: Any) -> bytes:
    out = io.BytesIO()
    np.save(out, value, allow_pickle=False)
    return out.getvalue()


def _plain_text(value: Any) -> bytes:
    if isinstance(value, np.generic):
        value = _json_default(value)
    try:
        text = json.dumps(value, sort_keys=True, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CelltypeError(f"value cannot be stored as JSON: {exc}") from None
    return (text + "\n").encode()


def _strip_arrays(data: Any, storage: str, form: Form, offsets: list[int], chunks: list[bytes]) -> None:
    """Walk a (copied) mixed-plain structure: move each array's bytes to *chunks* and
    put 0 in its place."""
    kind = form["type"]
    if kind == "object":
        keys = sorted(data.keys())
        forms = [form["properties"][k] for k in keys]
        identical = False
    else:
        keys = list(range(len(data)))
        forms = form["items"]
        identical = form["identical"]
    item_form: Any
    for n, key in enumerate(keys):
        item = data[key]
        if isinstance(item, tuple):
            item = data[key] = list(item)
        item_form = forms if identical else forms[n]
        substorage = item_form.get("storage", storage) if isinstance(item_form, dict) else storage
        if substorage == _PLAIN or isinstance(item_form, str) or item_form["type"] in _SCALAR_FORMS:
            continue
        if substorage == _BINARY:
            arr = np.array(item) if isinstance(item, bytes) else item
            chunks.append(arr.tobytes())
            offsets.append(offsets[-1] + arr.nbytes)
            data[key] = 0
            continue
        _strip_arrays(item, substorage, item_form, offsets, chunks)


def serialize(value: Any) -> bytes:
    """The mixed buffer of *value*."""
    storage, form = get_form(value)
    if storage == _BINARY and not isinstance(value, bytes):
        if value.dtype.kind == "U":  # Seamless stores unicode arrays as their first item
            return _plain_text(value.tolist()[0])
    if storage == _PLAIN:
        return _plain_text(value)
    if storage == _BINARY:
        return _npy(value)
    data = copy.deepcopy(value)
    if isinstance(data, tuple):
        data = list(data)
    offsets = [0]
    chunks: list[bytes] = []
    _strip_arrays(data, storage, form, offsets, chunks)
    jsons = json.dumps([offsets, data], default=_json_default).encode()
    body = b"".join(chunks)
    stream = MAGIC_SEAMLESS + struct.pack("<QQ", len(jsons), len(body)) + jsons + body
    head = storage.encode()
    form_json = json.dumps(form).encode()
    return (
        MAGIC_SEAMLESS_MIXED
        + struct.pack("<B", len(head)) + head
        + struct.pack("<I", len(form_json)) + form_json
        + stream
    )


# ------------------------------------------------------------------------ deserialize


def _load_npy(buffer: bytes) -> Any:
    try:
        arr = np.load(io.BytesIO(buffer), allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CelltypeError(f"not a valid .npy buffer: {exc}") from None
    if arr.ndim == 0 and arr.dtype.char != "S":
        return arr[()]
    return arr


def _item_dtype(form: dict[str, Any]) -> np.dtype:
    kind, size = form["type"], form.get("bytesize")
    if kind == "string":
        return np.dtype(f"S{size}")
    if kind == "integer":
        return np.dtype(f"={'u' if form.get('unsigned') else 'i'}{size}")
    if kind == "number":
        return np.dtype(f"=f{size}")
    if kind == "boolean":
        return np.dtype("|b1")
    raise CelltypeError(f"unsupported array item type {kind!r} in a mixed buffer")


def _restore(data: Any, form: dict[str, Any], offsets: list[int], body: bytes) -> None:
    kind = form["type"]
    if kind == "object":
        keys: list[Any] = sorted(form["properties"])
        forms = [form["properties"][k] for k in keys]
    elif kind in ("array", "tuple"):
        keys = list(range(form["shape"][0]))
        forms = [form["items"] if form["identical"] else form["items"][n] for n in keys]
    else:
        raise CelltypeError(f"malformed mixed buffer: container type {kind!r}")
    for key, item_form in zip(keys, forms, strict=True):
        if not isinstance(item_form, dict):
            continue
        storage = item_form.get("storage", _PLAIN)
        if storage == _BINARY:
            if item_form.get("type") != "array":
                raise CelltypeError("structured values in mixed buffers are not supported")
            start = offsets.pop(0)
            size = offsets[0] - start
            dtype = _item_dtype(item_form["items"])
            arr = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=start)
            data[key] = arr.reshape(item_form["shape"]).copy()
        elif storage == _MIXED:
            _restore(data[key], item_form, offsets, body)


def deserialize(buffer: bytes) -> tuple[Any, str]:
    """(value, storage) of a mixed buffer."""
    if buffer.startswith(MAGIC_NUMPY):
        return _load_npy(buffer), _BINARY
    if not buffer.startswith(MAGIC_SEAMLESS_MIXED):
        try:
            return json.loads(buffer.decode()), _PLAIN
        except (ValueError, UnicodeDecodeError):
            return np.array(buffer), _BINARY
    try:
        pos = len(MAGIC_SEAMLESS_MIXED)
        (lh1,) = struct.unpack_from("<B", buffer, pos)
        storage = buffer[pos + 1 : pos + 1 + lh1].decode()
        pos += 1 + lh1
        (lh2,) = struct.unpack_from("<I", buffer, pos)
        form = json.loads(buffer[pos + 4 : pos + 4 + lh2])
        pos += 4 + lh2
        if storage != _MIXED or not buffer.startswith(MAGIC_SEAMLESS, pos):
            raise CelltypeError(f"unsupported mixed storage {storage!r}")
        pos += len(MAGIC_SEAMLESS)
        len_json, len_body = struct.unpack_from("<QQ", buffer, pos)
        pos += 16
        if len(buffer) != pos + len_json + len_body:
            raise CelltypeError("truncated or oversized mixed buffer")
        offsets, data = json.loads(buffer[pos : pos + len_json])
        _restore(data, form, offsets, buffer[pos + len_json :])
    except (struct.error, ValueError, KeyError, IndexError, TypeError) as exc:
        if isinstance(exc, CelltypeError):
            raise
        raise CelltypeError(f"malformed mixed buffer: {exc}") from None
    return data, storage


__all__ = ["get_form", "serialize", "deserialize", "as_array"]
