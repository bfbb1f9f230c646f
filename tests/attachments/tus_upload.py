"""Uploads a file to a tus 1.0 server with tuspy (the tus project's Python client), in chunks,
stopping after the first chunk and resuming with a second uploader that asks the server where
the upload stands (HEAD), as a client whose connection dropped does.

Usage: tus_upload.py <creation url> <bearer token> <file> <chunk size>
Prints the upload's URL on its last line.
"""

import sys

from tusclient import client

url, token, path, chunk_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tus = client.TusClient(url, headers={"Authorization": f"Bearer {token}"})

first = tus.uploader(file_path=path, chunk_size=chunk_size, metadata={"filename": "photo.enc"})
first.upload_chunk()  # creates the upload (POST), then sends one chunk (PATCH)

# A new uploader given the upload's URL learns its offset with HEAD, then PATCHes the rest.
resumed = tus.uploader(file_path=path, chunk_size=chunk_size, url=first.url)
assert resumed.offset == chunk_size, f"resumed at {resumed.offset}, not {chunk_size}"
resumed.upload()
assert resumed.offset == resumed.get_file_size(), "upload incomplete"
print(resumed.url)
