"""`alexnet verify`, `alexnet stats` and `alexnet upload`."""
import json
import sys

import click

from shards.errors import UserError, one_line


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes (default: all cores).")
def verify(out, workers):
    """Check every shard named in OUT's manifest, sample by sample.

    Checks presence, sha256, sample counts, the three members of each sample, that every JPEG
    decodes to 256x256 RGB, that `cls` agrees with `json`, that each `.idx` entry points at
    the right bytes, that mean_image.npy and pixel_sum.npy agree with the manifest, and that the
    statistics are usable (finite, mean in [0,1], std > 0, eigenvalues >= 0, orthonormal
    eigenvectors). Exit 0 with a one-line summary, or name each problem and exit 1. A damaged
    manifest is one line and exit 1; no folder or no manifest, exit 2.

    \b
    Example:
      alexnet verify /data/shards
    """
    from shards.verify import verify_shard_dir

    def progress(done, total):
        click.echo(f"\rverify: {done}/{total} shards", nl=done == total, err=True)

    with one_line(out):  # what verify cannot read is a problem it lists; anything else is one line
        report = verify_shard_dir(out, workers=workers, progress=progress if sys.stderr.isatty() else None)
    for p in report.problems:
        click.echo(str(p))
    click.echo(report.line(), err=not report.ok)
    if not report.ok:
        sys.exit(1)


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
def stats(out, as_json):
    """Print the training-pixel statistics of OUT (values in [0,1]).

    Mean, std, eigenvalues and eigenvectors (columns) of the RGB covariance, used by the PCA
    lighting of paper Section 4.1.

    \b
    Example:
      alexnet stats /data/shards
      alexnet stats /data/shards --json | jq .eigval
    """
    from shards.manifest import Manifest

    m = Manifest.load(out)  # one line: exit 2 without a manifest, exit 1 (DamagedManifest) for a damaged one
    if m.stats is None:
        raise UserError(f"{out}: has no training split, so no statistics")
    s = m.stats
    if as_json:
        keys = ("pixels", "images", "mean", "std", "cov", "eigval", "eigvec", "mean_image")
        click.echo(json.dumps({k: getattr(s, k) for k in keys}))
        return

    def row(v):
        return "  ".join(f"{x:+.6f}" for x in v)

    click.echo(f"statistics of {out} ({s.images:,} training images, {s.pixels:,} pixels; values in [0,1])")
    click.echo(f"             {'R':>9}  {'G':>9}  {'B':>9}")
    click.echo(f"mean         {row(s.mean)}")
    click.echo(f"std          {row(s.std)}")
    click.echo(f"eigenvalues  {row(s.eigval)}   (descending)")
    for i, r in enumerate(s.eigvec):
        label = "eigenvectors" if i == 0 else ""
        click.echo(f"{label:<12} {row(r)}   ({'RGB'[i]} component of each column)")
    click.echo(f"mean image   {s.mean_image} ({m.image_size}x{m.image_size}x3 float32)")


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("dest")
@click.option("--jobs", type=click.IntRange(1), default=8, show_default=True, help="Objects uploaded at once.")
def upload(out, dest, jobs):
    """Upload the shard directory OUT to DEST, an S3 prefix (s3://bucket/prefix).

    Every object is uploaded whole with its sha256 as metadata, and the manifest last, so a
    reader never sees part of the directory. Run it again after an interruption: only what is
    missing or differs is sent, and the result is the same as one uninterrupted run. Credentials
    and the endpoint come from the AWS environment (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...,
    AWS_ENDPOINT_URL for MinIO, Ceph and other S3-compatible stores). Needs boto3:
    pip install "alexnet-imagenet[s3]".

    \b
    Example:
      alexnet upload /data/shards s3://my-bucket/imagenet/shards
      alexnet train s3://my-bucket/imagenet/shards --out runs/paper
    """
    from shards.upload import upload_shard_dir

    def progress(done, total):
        click.echo(f"\rupload: {done}/{total} objects", nl=done == total, err=True)

    with one_line(out):
        report = upload_shard_dir(out, dest, jobs=jobs, progress=progress if sys.stderr.isatty() else None)
    click.echo(report.line())
