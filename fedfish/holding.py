"""What a client holds between rounds, stored in a size proportional to what changed.

A node needs the global model at the version it last received (to train from it and to
receive only later changes), the mask it trains under and, with error feedback, the part
of its updates not yet sent. Held as a dense model that is 4P bytes per client (6.7 MB
for the FedAvg CNN, 6.7 GB for 1,000 clients). But version 0 can be rebuilt by every node
(a seed or a public checkpoint), and masked training changes only the masked entries, so
:class:`Holding` keeps the values where the model differs from version 0 (under a fixed
mask: exactly the mask) and the encoded mask: about ``4k`` bytes plus a few percent.
A node that cannot rebuild version 0, or holds a model that differs everywhere (after
dense warm-up rounds), keeps a dense copy.

:meth:`Holding.to_bytes` is the one serialized form, in memory (``context.state``) and
on disk, and ends in a sha256 of everything before it: :meth:`Holding.from_bytes` refuses
a blob that was altered, truncated or written by another format, naming why.

Layout: ``b"FFST"``, format byte, u32 length of a JSON header, the header (scalars and
the byte length of each section), the sections (each a :mod:`fedfish.codec` payload, so
each carries its own CRC as well), then the 32-byte sha256.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import torch

from fedfish import codec
from fedfish.masks import Mask

MAGIC = b"FFST"
FORMAT = 1
_DIGEST_BYTES = 32
# Sections in file order; "positions" is absent when the overridden entries are the mask's.
_SECTIONS = ("mask", "positions", "values", "dense", "memory", "buffers")


class HoldingError(ValueError):
    """A stored holding is corrupt, truncated or of another format."""


@dataclass
class Holding:
    """A node's model, mask and error-feedback memory.

    Attributes
    ----------
    run_token : str
        The run the holding belongs to (a node never builds on another run's model).
    model_version : int
        Version of the global model held; -1 when nothing is held.
    base_digest : str
        ``fedfish.layout.params_digest`` of the version-0 model the overrides sit on
        ("" when the model is held densely).
    positions : torch.Tensor | None
        bool ``(P,)``: entries whose value differs from version 0 (None: held densely or
        nothing held).
    values : torch.Tensor | None
        fp32 values at ``positions`` (in ascending index order), or the dense model.
    mask : bytes
        The mask the node trains under, as the codec payload it arrived in (b"" if none).
    mask_version : int
        Version of ``mask`` (or of a seeded random mask); -1 when none is held.
    memory : torch.Tensor | None
        Error-feedback memory: fp32 ``(k,)`` in mask order, or ``(P,)`` for top-k.
    memory_mask_version : int
        Mask version the memory is aligned with (-1 for a dense memory).
    buffers : torch.Tensor | None
        The node's own buffers (BatchNorm statistics, ``fedfish.layout.flatten_buffers``)
        when they stay local (FedBN); None when the server sends the global ones.
    """

    run_token: str = ""
    model_version: int = -1
    base_digest: str = ""
    positions: torch.Tensor | None = None
    values: torch.Tensor | None = None
    mask: bytes = b""
    mask_version: int = -1
    memory: torch.Tensor | None = None
    memory_mask_version: int = -1
    buffers: torch.Tensor | None = None
    _mask_cache: Mask | None = field(default=None, repr=False, compare=False)

    @property
    def holds_model(self) -> bool:
        """Whether a model version is held."""
        return self.model_version >= 0

    @property
    def is_dense(self) -> bool:
        """Whether the model is held as a dense vector (no version-0 base needed)."""
        return self.holds_model and self.positions is None

    def held_mask(self) -> Mask | None:
        """The decoded mask payload (None if no payload is held); decoded once."""
        if not self.mask:
            return None
        if self._mask_cache is None:
            self._mask_cache = codec.decode_mask(self.mask)
        return self._mask_cache

    def set_mask(self, payload: bytes, version: int, decoded: Mask | None = None) -> None:
        """Hold a new mask: its payload (b"" for a seeded mask the node regenerates) and,
        if the caller has it, the decoded mask (saves decoding it again)."""
        self.mask = payload
        self.mask_version = version
        self._mask_cache = decoded

    def model_vector(self, base0: torch.Tensor | None) -> torch.Tensor:
        """The held model as a fresh fp32 ``(P,)`` vector.

        Raises
        ------
        ValueError
            If nothing is held, or the overrides need a version-0 base and none is given.
        """
        if not self.holds_model or self.values is None:
            raise ValueError("Holding.model_vector: no model held")
        if self.positions is None:
            return self.values.clone()
        if base0 is None:
            raise ValueError("Holding.model_vector: the held model needs its version-0 base")
        out = base0.clone()
        out[self.positions] = self.values
        return out

    def set_model(self, vector: torch.Tensor, version: int, base0: torch.Tensor | None, base_digest: str) -> None:
        """Hold ``vector`` as model ``version``: as overrides of ``base0`` where one is given.

        Overrides are the entries whose bits differ from ``base0``; when they all lie under
        the held mask, the whole mask is stored instead (positions then cost nothing, as the
        mask is held anyway).
        """
        if base0 is None:
            self.positions, self.values, self.base_digest = None, vector.clone(), ""
        else:
            differ = vector.view(torch.int32) != base0.view(torch.int32)
            mask = self.held_mask()
            if mask is not None and mask.num_params == differ.numel() and not bool((differ & ~mask.bits).any()):
                differ = mask.bits
            if bool(differ.all()):
                self.positions, self.values, self.base_digest = None, vector.clone(), ""
            else:
                self.positions, self.values, self.base_digest = differ.clone(), vector[differ].clone(), base_digest
        self.model_version = version

    def forget(self) -> None:
        """Drop everything held but the run token (as a node that lost its state)."""
        token = self.run_token
        self.__dict__.update(Holding(run_token=token).__dict__)

    # ------------------------------------------------------------------ serialization
    def to_bytes(self) -> bytes:
        """The one serialized form (in memory and on disk); see the module docstring."""
        sections: dict[str, bytes] = {}
        if self.mask:
            sections["mask"] = self.mask
        positions_are_mask = False
        if self.values is not None:
            if self.positions is None:
                sections["dense"] = codec.encode_dense(self.values)
            else:
                mask = self.held_mask()
                positions_are_mask = mask is not None and torch.equal(mask.bits, self.positions)
                if not positions_are_mask:
                    sections["positions"] = codec.encode_mask(Mask(self.positions))
                sections["values"] = codec.encode_dense(self.values)
        if self.memory is not None:
            sections["memory"] = codec.encode_dense(self.memory)
        if self.buffers is not None:
            sections["buffers"] = codec.encode_dense(self.buffers)
        header = {
            "run-token": self.run_token,
            "model-version": self.model_version,
            "base-digest": self.base_digest,
            "mask-version": self.mask_version,
            "memory-mask-version": self.memory_mask_version,
            "positions-are-mask": positions_are_mask,
            "sections": {name: len(sections[name]) for name in _SECTIONS if name in sections},
        }
        head = json.dumps(header, sort_keys=True).encode()
        body = b"".join([MAGIC, bytes([FORMAT]), struct.pack("<I", len(head)), head,
                         *(sections[name] for name in _SECTIONS if name in sections)])
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Holding:
        """Inverse of :meth:`to_bytes`.

        Raises
        ------
        HoldingError
            Naming what is wrong: magic, format, digest, header or a section.
        """
        if len(blob) < len(MAGIC) + 5 + _DIGEST_BYTES or blob[:4] != MAGIC:
            raise HoldingError("not a FedFish client state (bad magic or too short)")
        if blob[4] != FORMAT:
            raise HoldingError(f"client state format {blob[4]}, expected {FORMAT}")
        body, digest = blob[:-_DIGEST_BYTES], blob[-_DIGEST_BYTES:]
        if hashlib.sha256(body).digest() != digest:
            raise HoldingError("client state digest mismatch: the file was altered or truncated")
        (head_len,) = struct.unpack_from("<I", body, 5)
        try:
            header = json.loads(body[9 : 9 + head_len])
            lengths = dict(header["sections"])
            offset = 9 + head_len
            sections: dict[str, bytes] = {}
            for name in _SECTIONS:
                if name in lengths:
                    sections[name] = body[offset : offset + int(lengths[name])]
                    offset += int(lengths[name])
            if offset != len(body) or set(lengths) - set(_SECTIONS):
                raise HoldingError("client state sections do not fill the file")
            return cls._from_sections(header, sections)
        except (KeyError, TypeError, json.JSONDecodeError, codec.CodecError) as err:
            raise HoldingError(f"client state unreadable: {err}") from err

    @classmethod
    def _from_sections(cls, header: dict, sections: dict[str, bytes]) -> Holding:
        out = cls(
            run_token=str(header["run-token"]),
            model_version=int(header["model-version"]),
            base_digest=str(header["base-digest"]),
            mask_version=int(header["mask-version"]),
            memory_mask_version=int(header["memory-mask-version"]),
        )
        out.mask = sections.get("mask", b"")
        mask = out.held_mask()
        if "dense" in sections:
            out.values = codec.decode_dense(sections["dense"], codec.parse_header(sections["dense"]).count)
        elif "values" in sections:
            if header["positions-are-mask"]:
                if mask is None:
                    raise HoldingError("client state: positions refer to a mask it does not hold")
                out.positions = mask.bits
            else:
                out.positions = codec.decode_mask(sections["positions"]).bits
            out.values = codec.decode_dense(sections["values"], int(out.positions.sum()))
        for name in ("memory", "buffers"):
            if name in sections:
                setattr(out, name, codec.decode_dense(sections[name], codec.parse_header(sections[name]).count))
        if out.holds_model != (out.values is not None):
            raise HoldingError("client state: model version and stored values disagree")
        return out
