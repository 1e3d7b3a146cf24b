"""`cellfm convert INPUTS... -o OUT.ome.zarr`: TIFF files/folders to a resumable OME-Zarr HCS plate."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    from cellfm.data.tiff_ingest import DEFAULT_PATTERN

    p = subparsers.add_parser(
        "convert", help="convert TIFFs (or .nd2/.czi/.lif) to an OME-Zarr HCS plate (resumable)"
    )
    p.add_argument(
        "inputs", nargs="*", help="TIFF or .nd2/.czi/.lif files, or folders (not needed with --manifest)"
    )
    p.add_argument("-o", "--output", required=True, help="output store, e.g. plate.ome.zarr")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pattern", default=DEFAULT_PATTERN,
                     help="regex on file names with named groups well (or row, column), field, channel, plate")  # fmt: skip
    src.add_argument("--preset", choices=("harmony", "metaxpress", "cellvoyager"),
                     help="an instrument export: Revvity Harmony (Opera Phenix / Operetta), Molecular Devices "
                     "MetaXpress, Yokogawa CellVoyager; channel names and pixel size from its metadata files")  # fmt: skip
    p.add_argument(
        "--plane",
        type=int,
        help="with --preset or .nd2/.czi/.lif: the z plane to convert (default: the first)",
    )
    p.add_argument(
        "--timepoint",
        type=int,
        help="with --preset or .nd2/.czi/.lif: the timepoint to convert (default: the first)",
    )
    p.add_argument(
        "--max-project", action="store_true", help=".nd2/.czi/.lif: maximum over z instead of one plane"
    )
    p.add_argument("--scenes", choices=("fields", "wells"), default="fields",
                   help=".nd2/.czi/.lif: 'fields' = a file is one well (from its name), its scenes the fields; "
                   "'wells' = each scene's name holds its well (default: fields)")  # fmt: skip
    src.add_argument("--manifest", help="CSV with columns path, well (or row, column), field, channel, plate; "
                     "optional column labels (a label TIFF for that field)")  # fmt: skip
    p.add_argument("--channel-order", help="comma-separated channel tokens as the pattern's 'channel' group "
                   "finds them (e.g. w2,w1,w3), in store order (default: natural sort, w2 < w10)")  # fmt: skip
    p.add_argument("--channel-names", help="channel labels: TOKEN=LABEL pairs (w1=DAPI,w2=Actin), labels in "
                   "--channel-order, or tokens found in the files (reorders); multi-channel files: in file order")  # fmt: skip
    p.add_argument("--plate-name", help="plate name in the metadata (default: the pattern's plate group, "
                   "else the output's name without .ome.zarr)")  # fmt: skip
    p.add_argument("--pixel-size", type=float, nargs="+", metavar="UM",
                   help="micrometres per pixel, X or Y X (default: from OME-TIFF / ImageJ metadata, else 1)")  # fmt: skip
    p.add_argument("--labels-pattern", help="regex picking label-image TIFFs among the inputs, with groups well "
                   "(or row, column), field, optional name; written as labels/<name> of that field")  # fmt: skip
    p.add_argument(
        "--labels-name", default="cells", help="label name when the labels pattern has no 'name' group"
    )
    p.add_argument(
        "--ngff-version", choices=("0.4", "0.5"), default="0.4", help="0.4 = Zarr v2, 0.5 = Zarr v3"
    )
    p.add_argument("--chunk", type=int, default=256, help="chunk edge in pixels (y and x)")
    p.add_argument("--min-level-size", type=int, default=256, help="stop the pyramid at this size")
    p.add_argument("--workers", type=int, default=2, help="dask threads for reading and writing")
    p.add_argument("--stats", action="store_true", help="compute per-channel statistics afterwards")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert, then print how many fields were written and how many were already complete."""
    from cellfm.data.bioio_reader import is_bioio_file
    from cellfm.data.convert import convert_plate
    from cellfm.data.tiff_ingest import (
        DEFAULT_PATTERN,
        expand_inputs,
        labels_from_csv,
        records_from_csv,
        records_from_pattern,
        split_label_files,
    )

    labels, preset_names, preset_pixel, bioio_inputs = None, None, None, False
    if args.manifest:
        records = records_from_csv(args.manifest)
        labels = labels_from_csv(args.manifest, args.labels_name)
    else:
        if not args.inputs:
            raise ValueError("give TIFF files/folders or --manifest")
        files = expand_inputs(args.inputs)
        if args.labels_pattern:
            files, labels = split_label_files(files, args.labels_pattern, args.labels_name)
        bioio_files = [f for f in files if is_bioio_file(f)]
        bioio_inputs = bool(bioio_files)
        if bioio_inputs:
            if len(bioio_files) != len(files) or args.preset:
                raise ValueError(f"convert .nd2/.czi/.lif files on their own (no --preset, no TIFFs besides label "
                                 f"images): got {len(bioio_files)} of them among {len(files)} inputs")  # fmt: skip
            from cellfm.data.bioio_reader import ReaderNotInstalled, records_from_files

            custom = args.pattern if args.pattern != DEFAULT_PATTERN else None
            try:
                records = records_from_files(files, custom, args.scenes, plane=args.plane,
                                             timepoint=args.timepoint, max_project=args.max_project)  # fmt: skip
            except ReaderNotInstalled as err:  # optional extra: one line naming the file and the pip command
                print(f"cellfm convert: error: {err}", file=sys.stderr)
                return 1
        elif args.preset:
            from cellfm.data.presets import read_layout

            layout = read_layout(args.preset, files, args.inputs, plane=args.plane, timepoint=args.timepoint)
            records, preset_names, preset_pixel = layout.records, layout.channel_names, layout.pixel_size
        else:
            records = records_from_pattern(files, args.pattern)
    if not (args.preset or bioio_inputs) and (args.plane is not None or args.timepoint is not None):
        raise ValueError("--plane and --timepoint select from an instrument export or .nd2/.czi/.lif files; "
                         "give --preset")  # fmt: skip
    if (args.max_project or args.scenes != "fields") and not bioio_inputs:
        raise ValueError("--max-project and --scenes apply to .nd2/.czi/.lif inputs")
    pixel = args.pixel_size
    if pixel is not None and len(pixel) not in (1, 2):
        raise ValueError(f"--pixel-size takes X or Y X micrometres, got {pixel}")
    pixel = preset_pixel if pixel is None else (pixel[0], pixel[0]) if len(pixel) == 1 else tuple(pixel)
    names = [n.strip() for n in args.channel_names.split(",")] if args.channel_names else preset_names
    order = [n.strip() for n in args.channel_order.split(",")] if args.channel_order else None
    report = convert_plate(records, args.output, channel_names=names, channel_order=order, version=args.ngff_version,
                           chunk=args.chunk, min_level_size=args.min_level_size, num_workers=args.workers,
                           plate_name=args.plate_name, pixel_size=pixel, labels=labels)  # fmt: skip
    print(f"{report.out}: wrote {len(report.written)} fields, {len(report.skipped)} already complete; "
          f"channels {report.channels}, {report.pixel_size[1]:g} um/pixel")  # fmt: skip
    if args.stats:
        from cellfm.data.plates import list_fields
        from cellfm.data.stats import compute_stats, save_stats

        where = save_stats(compute_stats(list_fields(args.output), num_workers=args.workers), args.output)
        print(f"channel statistics saved to {where}")
    return 0
