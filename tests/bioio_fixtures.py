"""Small CZI, LIF and ND2 files written offline for the bioio reader tests.

CZI: pylibCZIrw's writer, with the scene names ZEN keeps in `Information/Image/Dimensions/S/Scenes`
added through its metadata editor. LIF: the documented Leica container, written byte by byte: a
UTF-16 XML header block (0x70, size, 0x2A, character count, XML) then one memory block per image
(0x70, 0, 0x2A, uint64 size, 0x2A, name length, UTF-16 name, pixels), version 2 layout. ND2 (no
writer exists): the chunked v3 container, written byte by byte (see `write_nd2`)."""

from __future__ import annotations

import itertools
import struct
from xml.sax.saxutils import quoteattr

import numpy as np


def write_czi(path: str, scenes: dict[str, np.ndarray], channel_names: list[str], pixel_um: tuple[float, float],
              z_um: float = 1.0, shapes: list[str] | None = None) -> None:  # fmt: skip
    """`scenes` maps scene name -> (C, Z, Y, X) or (T, C, Z, Y, X) uint16 array; scenes are placed side by
    side. `shapes` names each scene's carrier shape, as ZEN's HCS scenes name their well (`<Shape Name="B4">`)."""
    from pylibCZIrw import czi

    with czi.create_czi(path, exist_ok=True) as out:
        x0 = 0
        for s, data in enumerate(scenes.values()):
            data = data[None] if data.ndim == 4 else data
            for t, c, z in itertools.product(*(range(n) for n in data.shape[:3])):
                out.write(data[t, c, z][..., None], plane={"C": c, "Z": z, "T": t}, scene=s, location=(x0, 0))
            x0 += data.shape[4] + 10
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


def _clx(name: str, value) -> str:
    """One CLx variant XML element (the XML form of ND2 metadata chunks); lists hold `no_name` items."""
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else (("no_name", v) for v in value)
        return f'<{name} runtype="CLxListVariant">{"".join(_clx(k, v) for k, v in items)}</{name}>'
    if isinstance(value, bool):
        kind, value = "bool", str(value).lower()
    else:
        kind = {int: "lx_uint32", float: "double"}.get(type(value), "CLxStringW")
    return f'<{name} runtype="{kind}" value={quoteattr(str(value))}/>'


def _nd2_chunk(name: bytes, data: bytes, name_length: int | None = None) -> bytes:
    name_length = name_length or len(name)
    return struct.pack("<IIQ", 0x0ABECEDA, name_length, len(data)) + name.ljust(name_length, b"\0") + data


def write_nd2(path: str, positions: dict[str, np.ndarray], channels: list[str], pixel_um: float,
              z_um: float = 1.0) -> None:  # fmt: skip
    """`positions` maps XY position name -> (C, Z, Y, X) uint16 array. ND2 v3 layout: a signature chunk,
    metadata chunks as CLx variant XML (attributes, picture metadata with the channel planes and the
    calibration, the experiment: an XY position loop around a Z loop), one `ImageDataSeq|i!` chunk per
    frame (its pixels 4096 bytes after the chunk start: an 8-byte timestamp, then Y, X, C), the
    acquisition times, and the chunk map whose location closes the file."""
    c, z, h, w = next(iter(positions.values())).shape
    out = bytearray(_nd2_chunk(b"ND2 FILE SIGNATURE CHUNK NAME01!", b"Ver3.0".ljust(64, b"\0")))
    chunk_map: dict[bytes, int] = {}

    def add(name: bytes, data: bytes, name_length: int | None = None) -> None:
        chunk_map[name] = len(out)
        out.extend(_nd2_chunk(name, data, name_length))

    def variant(root: str, value: dict) -> bytes:
        return f'<?xml version="1.0" encoding="UTF-8"?><variant version="1.0">{_clx(root, value)}</variant>'.encode()

    attributes = dict(uiWidth=w, uiWidthBytes=w * c * 2, uiHeight=h, uiComp=c, uiBpcInMemory=16, uiBpcSignificant=16,
                      uiSequenceCount=len(positions) * z, uiTileWidth=w, uiTileHeight=h, eCompression=2,
                      uiVirtualComponents=c)  # fmt: skip
    add(b"ImageAttributesLV!", variant("SLxImageAttributes", attributes))

    def spectrum(nm: float) -> dict:
        return dict(uiCount=1, pPoint=dict(Point0=dict(dTValue=1.0, dWavelength=float(nm), eType=1)))

    planes = {f"a{k}": dict(sDescription=name, uiCompCount=1, uiSampleIndex=k, uiColor=255,
                            pFluorescentProbe=dict(m_ExcitationSpectrum=spectrum(400 + 100 * k),
                                                   m_EmissionSpectrum=spectrum(450 + 100 * k)))
              for k, name in enumerate(channels)}  # fmt: skip
    picture = dict(
        bCalibrated=True, dCalibration=float(pixel_um), sPicturePlanes=dict(uiCount=c, sPlaneNew=planes)
    )
    add(b"ImageMetadataSeqLV|0!", variant("SLxPictureMetadata", picture))
    z_loop = dict(
        eType=4, uLoopPars=dict(uiCount=z, dZStep=float(z_um), dZLow=0.0, dZHigh=z_um * (z - 1), iType=0)
    )
    points = [dict(dPosX=float(i), dPosY=0.0, dPosZ=0.0, dPosName=name) for i, name in enumerate(positions)]
    experiment = dict(
        eType=2, uLoopPars=dict(bUseZ=False, Points=points), ppNextLevelEx=[z_loop] if z > 1 else []
    )
    add(b"ImageMetadataLV!", variant("SLxExperiment", experiment))
    seq = 0
    for data in positions.values():
        for plane in range(z):
            frame = np.ascontiguousarray(data[:, plane].transpose(1, 2, 0)).astype("<u2").tobytes()
            add(f"ImageDataSeq|{seq}!".encode(), struct.pack("<d", float(seq)) + frame, name_length=4072)
            seq += 1
    add(b"CustomData|AcqTimesCache!", np.arange(seq, dtype="<f8").tobytes())
    location = len(out)
    entries = b"".join(name + struct.pack("<QQ", offset, 0) for name, offset in chunk_map.items())
    entries += b"ND2 CHUNK MAP SIGNATURE 0000001!" + struct.pack("<Q", location)
    out.extend(_nd2_chunk(b"ND2 FILEMAP SIGNATURE NAME 0001!", entries))
    with open(path, "wb") as fh:
        fh.write(bytes(out))
