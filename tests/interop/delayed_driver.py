"""Python transformations with ``seamless_transformer.delayed`` (seamless-transformer
0.6.1, unmodified): ``python delayed_driver.py MODE [NODE_URL]``.

MODE ``remote``: buffer server, database and jobserver of the node at NODE_URL (the
jobserver client registered through seamless-remote's API, see seamless_run_remote.py);
``local``: in-process execution with no remote clients at all. Prints one line
``RESULT {json}`` with each transformation's value and result checksum.
"""

import json
import sys

mode = sys.argv[1]
if mode == "remote":
    node = sys.argv[2]
    import seamless_config
    import seamless_remote.jobserver_remote as jobserver_remote
    from seamless_config.select import select_execution

    seamless_config.set_remote_clients({
        "database": [{"url": node + "/database", "readonly": False}],
        "buffer": [{"url": node + "/buffers", "readonly": False}],
    })
    jobserver_remote.define_extern_client("node", "jobserver", url=node + "/jobserver")
    jobserver_remote.activate(no_main=True, extern_clients=["node"])
    select_execution("remote")

import numpy as np  # noqa: E402
from seamless_transformer import delayed  # noqa: E402


def add(a, b):
    return a * 100 + b


def stats(arr, label):
    return {"label": label, "sum": int(arr.sum()), "doubled": arr * 2}


def greet(name):
    return "héllo " + name


def matrix(n):
    import numpy as np

    return np.arange(n * n, dtype="float32").reshape(n, n)


out = {}
for name, tf in (
    ("add", delayed(add)(4, 3)),
    ("stats", delayed(stats)(np.arange(5), "x")),
    ("greet", delayed(greet)("wörld")),
    ("matrix", delayed(matrix)(3)),
):
    value = tf.run()
    out[name] = {"value": repr(value), "checksum": tf.result_checksum.hex()}
print("RESULT " + json.dumps(out))
import seamless  # noqa: E402

seamless.close()
