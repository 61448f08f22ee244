"""The shared services start on loopback and answer (so later failures are not fixture bugs)."""

import boto3
import s3fs


def test_s3_endpoint_roundtrip(s3_env):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env["endpoint"]})
    path = f"{s3_env['bucket']}/hello.txt"
    fs.pipe(path, b"hi")
    obj = boto3.client("s3").get_object(Bucket=s3_env["bucket"], Key="hello.txt")
    assert obj["Body"].read() == b"hi"
    assert s3_env["endpoint"].startswith("http://127.0.0.1:")
