"""Small CZI and LIF files written offline for the bioio reader tests (no ND2 writer exists).

CZI: pylibCZIrw's writer, with the scene names ZEN keeps in `Information/Image/Dimensions/S/Scenes`
added through its metadata editor. LIF: the documented Leica container, written byte by byte: a
UTF-16 XML header block (0x70, size, 0x2A, character count, XML) then one memory block per image
(0x70, 0, 0x2A, uint64 size, 0x2A, name length, UTF-16 name, pixels), version 2 layout."""

from __future__ import annotations

import struct
from xml.sax.saxutils import quoteattr

import numpy as np


def write_czi(path: str, scenes: dict[str, np.ndarray], channel_names: list[str], pixel_um: tuple[float, float],
              z_um: float = 1.0, shapes: list[str] | None = None) -> None:  # fmt: skip
    """`scenes` maps scene name -> (C, Z, Y, X) uint16 array; scenes are placed side by side. `shapes`
    names each scene's carrier shape, as ZEN's HCS scenes name their well (`<Shape Name="B4">`)."""
    from pylibCZIrw import czi

    with czi.create_czi(path, exist_ok=True) as out:
        x0 = 0
        for s, data in enumerate(scenes.values()):
            for c in range(data.shape[0]):
                for z in range(data.shape[1]):
                    out.write(
                        data[c, z][..., None], plane={"C": c, "Z": z, "T": 0}, scene=s, location=(x0, 0)
                    )
            x0 += data.shape[3] + 10
        out.write_metadata(document_name="cellfm-test", channel_names=dict(enumerate(channel_names)),
                           scale_x=pixel_um[1] * 1e-6, scale_y=pixel_um[0] * 1e-6, scale_z=z_um * 1e-6)  # fmt: skip
    entries = "".join(
        f'<Scene Index="{i}" Name={quoteattr(name)}>'
        + (f"<Shape Name={quoteattr(shapes[i])}/>" if shapes else "")
        + "</Scene>"
        for i, name in enumerate(scenes)
    )
    with czi.edit_czi(path) as editor, editor.edit_session() as builder:
        xml = builder.get_xml()
        builder.set_xml(xml.replace("<Dimensions>", f"<Dimensions><S><Scenes>{entries}</Scenes></S>", 1))


def _block(payload: bytes) -> bytes:
    return struct.pack("<IIBI", 0x70, len(payload) + 5, 0x2A, len(payload) // 2) + payload


def write_lif(path: str, scenes: dict[str, np.ndarray], luts: list[str], pixel_um: tuple[float, float],
              z_um: float = 1.0) -> None:  # fmt: skip
    """`scenes` maps image name -> (C, Z, Y, X) uint16 array; channel names are the LUT names."""
    images, blocks = [], [("MemBlock_0", b"")]
    for i, (name, data) in enumerate(scenes.items(), start=1):
        c, z, h, w = data.shape
        item = data.dtype.itemsize
        chans = "".join(
            f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="{8 * item}" NameOfMeasuredQuantity="" '
            f'Min="0" Max="{2 ** (8 * item) - 1}" Unit="" LUTName={quoteattr(lut)} IsLUTInverted="0" '
            f'BytesInc="{k * h * w * item}" BitInc="0"/>'
            for k, lut in enumerate(luts)
        )
        dims = [(1, w, pixel_um[1] * (w - 1), item), (2, h, pixel_um[0] * (h - 1), w * item)]
        if z > 1:
            dims.append((3, z, z_um * (z - 1), c * h * w * item))
        dim_xml = "".join(
            f'<DimensionDescription DimID="{d}" NumberOfElements="{n}" Origin="0" Length="{length * 1e-6!r}" '
            f'Unit="m" BitInc="0" BytesInc="{inc}"/>'
            for d, n, length, inc in dims
        )
        pixels = np.ascontiguousarray(data.transpose(1, 0, 2, 3)).astype("<u2").tobytes()  # Z, C, Y, X
        images.append(
            f'<Element Name={quoteattr(name)}><Data><Image TextDescription=""><ImageDescription>'
            f"<Channels>{chans}</Channels><Dimensions>{dim_xml}</Dimensions></ImageDescription></Image></Data>"
            f'<Memory Size="{len(pixels)}" MemoryBlockID="MemBlock_{i}"/><Children/></Element>'
        )
        blocks.append((f"MemBlock_{i}", pixels))
    xml = (
        '<LMSDataContainerHeader Version="2"><Element Name="cellfm-test"><Data><Experiment/></Data>'
        f'<Memory Size="0" MemoryBlockID="MemBlock_0"/><Children>{"".join(images)}</Children></Element>'
        "</LMSDataContainerHeader>"
    )
    with open(path, "wb") as fh:
        fh.write(_block(xml.encode("utf-16-le")))
        for name, pixels in blocks:
            encoded = name.encode("utf-16-le")
            fh.write(struct.pack("<IIBQBI", 0x70, 0, 0x2A, len(pixels), 0x2A, len(name)) + encoded + pixels)
