"""One process of `multihost_test.py`: joins the run from the environment, reads the demo's
data (prepared in the shared workdir), logs one record."""

import json
import sys

from prompt4trust_jax import metrics_log, sharding

sharding.initialize_distributed()  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID

import jax  # noqa: E402

from configs import demo  # noqa: E402
from prompt4trust_jax import data  # noqa: E402

workdir = sys.argv[1]
config = demo.get_config()
records = data.configured_source(config.data, config.data.split, workdir)
logger = metrics_log.Logger(workdir, total_rollouts=1, num_iterations=1)
logger.write(1, {"loss": 0.5})
logger.close()
print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                  "records": len(records)}))
