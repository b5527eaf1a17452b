"""The listeners file a running server writes (mailhub/runfile.py)."""
import json

from mailhub.runfile import listeners_path, read_listeners


def test_read_listeners_only_trusts_a_complete_file_of_that_process(tmp_path):
    path = listeners_path(tmp_path)
    assert read_listeners(tmp_path, 123) is None  # not written yet
    path.parent.mkdir(parents=True)
    path.write_text('{"pid": 123, "listen')  # half-written
    assert read_listeners(tmp_path, 123) is None
    path.write_text(json.dumps({"pid": 99, "listeners": {"mx": [2525]}}))  # a previous run
    assert read_listeners(tmp_path, 123) is None
    path.write_text(json.dumps({"pid": 123, "listeners": {"mx": [2525], "imap": [1143]}}))
    assert read_listeners(tmp_path, 123) == {"mx": [2525], "imap": [1143]}
    assert read_listeners(tmp_path, None) is None
