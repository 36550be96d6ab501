"""``seamless-run`` (seamless-transformer 0.6.1, unmodified) with remote execution through
the jobserver at ``$SEAMLESS_JOBSERVER_URL``.

Buffer server and database come from ``SEAMLESS_REMOTE_CLIENTS`` as for the other
Seamless command-line tools. seamless-config 0.3.2 has no setting that points a client
at an already running jobserver (its jobserver clients are launched through a cluster
definition), so this driver does what a cluster definition would: it registers an
extern jobserver client with seamless-remote's own API and selects remote execution,
then hands over to seamless-run's entry point.
"""

import os
import sys

import seamless_remote.jobserver_remote as jobserver_remote
from seamless_config.select import select_execution

jobserver_remote.define_extern_client("node", "jobserver", url=os.environ["SEAMLESS_JOBSERVER_URL"])
jobserver_remote.activate(no_main=True, extern_clients=["node"])
select_execution("remote")

from seamless_transformer.cmd.api.main import main  # noqa: E402

sys.argv[0] = "seamless-run"
sys.exit(main())
