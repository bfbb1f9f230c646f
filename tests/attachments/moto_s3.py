"""An S3 server for the attachment tests: moto's (an S3 implementation we did not write) on a
loopback port of its own, with one bucket, and a way to look into that bucket from outside the
server under test (boto3, over the S3 API).

Usage: moto_s3.py <bucket>
Prints the endpoint URL on one line once it serves. Then, for each line `list` read from its
standard input, prints one JSON line: {"objects": {key: size}, "uploads": [key of each
unfinished multipart upload]}. Stops when its standard input closes (the test that started it
ended, or died).
"""

import json
import logging
import sys

import boto3
from moto.server import ThreadedMotoServer

bucket = sys.argv[1]
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
endpoint = f"http://{host}:{port}"
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
)
s3.create_bucket(Bucket=bucket)
print(endpoint, flush=True)

for line in sys.stdin:
    if line.strip() != "list":
        print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
        continue
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    print(
        json.dumps(
            {
                "objects": {o["Key"]: o["Size"] for o in objects},
                "uploads": [u["Key"] for u in uploads],
            }
        ),
        flush=True,
    )
server.stop()
