"""TensorFlow smoke training: the torch workload's model and task, written the TensorFlow way.

- Input pipeline: tf.data maps step k to its batch with stateless random ops (a per-epoch
  `index_shuffle` permutation plus jitter), in parallel, with prefetch. Batch k is a pure
  function of (seed, k), so a resumed run replays the exact data.
- GPU: Keras mixed precision (bf16 on Ampere+, else fp16 with a LossScaleOptimizer), TF32,
  and `--compile` for XLA (`jit_compile=True` on the forward and backward pass). The default size
  on a GPU keeps it busy with matmuls (common.SIZINGS), on a CPU it stays small.
- Every visible GPU of this node trains, through tf.distribute.MirroredStrategy (one replica per
  GPU, each taking its slice of the global batch; on a CPU, one replica). One node only: several
  processes (torchrun's WORLD_SIZE, or a TF_CONFIG naming several tasks) are refused, because
  MultiWorkerMirroredStrategy needs a TF_CONFIG per worker that no launcher we render writes, and
  the torch workload already checks the multi-node path.
- CPU: fp32 with op determinism, so that kill + resume gives bitwise-equal weights.
- Checkpoints: tf.train.CheckpointManager; TF writes the data files first and then swaps the
  `checkpoint` index file atomically, so a kill mid-save leaves the previous checkpoint current.

Run: python -m cudabox.workloads.tf_smoke --help
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from cudabox.errors import UsageError
from cudabox.workloads import common
from cudabox.workloads.common import Config, Log, StopRequest, World

# TF's C++ start-up chatter (oneDNN notices, CPU feature hints) buries the progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_import_start = time.perf_counter()
import keras  # noqa: E402  (timed: import cost is one of the reported figures)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _import_start
CHECKPOINTS = "tf_checkpoints"


# --- data ------------------------------------------------------------------------------------


def make_task(seed: int, train_size: int) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(train, held-out) splits of (features, labels), generated in memory from `seed`."""
    rng = np.random.default_rng(common.stream_seed(seed, common.DATA))
    n_clusters = common.CLASSES * common.CLUSTERS_PER_CLASS
    centres = common.CENTRE_SCALE * rng.standard_normal((n_clusters, common.FEATURES))

    def draw(n: int) -> tuple[Any, Any]:
        cluster = rng.integers(0, n_clusters, n)
        noise = common.POINT_NOISE * rng.standard_normal((n, common.FEATURES))
        x = (centres[cluster] + noise).astype(np.float32)
        return x, (cluster // common.CLUSTERS_PER_CLASS).astype(np.int32)

    return draw(train_size), draw(common.EVAL_SIZE)


def train_dataset(split: tuple[Any, Any], config: Config, start_step: int) -> Any:
    """tf.data pipeline of the batches for steps start_step..steps-1."""
    features, labels = tf.constant(split[0]), tf.constant(split[1])
    size, batch = config.train_size, config.batch_size
    per_epoch = max(1, size // batch)
    order_seed = common.stream_seed(config.seed, common.ORDER)
    jitter_seed = common.stream_seed(config.seed, common.JITTER)

    def batch_for_step(step: Any) -> tuple[Any, Any]:
        epoch = step // per_epoch
        positions = (step % per_epoch) * batch + tf.range(batch, dtype=tf.int64)
        # A stateless permutation of the epoch, evaluated only at this batch's positions.
        seed = tf.stack([tf.constant(order_seed, tf.int64), epoch])
        index = tf.random.experimental.index_shuffle(positions, seed, size - 1)
        jitter = tf.random.stateless_normal(
            [batch, common.FEATURES], seed=tf.stack([tf.constant(jitter_seed, tf.int64), step])
        )
        x = tf.gather(features, index) + common.AUGMENT_NOISE * jitter
        return x, tf.gather(labels, index)

    steps = tf.data.Dataset.range(start_step, config.steps)
    if config.workers > 0:  # deterministic=True: parallel, yet batches arrive in step order
        batches = steps.map(batch_for_step, num_parallel_calls=config.workers, deterministic=True)
    else:
        batches = steps.map(batch_for_step)
    return batches.prefetch(tf.data.AUTOTUNE)


# --- model -----------------------------------------------------------------------------------


def build_model(width: int, depth: int) -> Any:
    """Residual MLP with pre-norm blocks x + W2 gelu(W1 norm(x)), as in the torch workload."""
    inputs = keras.Input((common.FEATURES,))
    x = keras.layers.Dense(width)(inputs)
    for _ in range(depth):
        h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
        h = keras.layers.Dense(2 * width, activation="gelu")(h)
        x = keras.layers.Add()([x, keras.layers.Dense(width)(h)])
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    # Logits in fp32 under mixed precision: the softmax/loss is where low precision hurts.
    outputs = keras.layers.Dense(common.CLASSES, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="residual_mlp")


def weights_sha256(model: Any) -> str:
    """sha256 over every weight (path, then raw bytes), in model order."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def lr_schedule(config: Config) -> Any:
    """Linear warm-up over 5% of the steps, then cosine decay to zero."""
    warm = max(1, config.steps // 20)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, config.steps - warm),
        warmup_target=config.lr,
        warmup_steps=warm,
    )


# --- device, precision and replicas ----------------------------------------------------------


def refuse_several_processes(world: World, env: Mapping[str, str] | None = None) -> None:
    """One process per node: MirroredStrategy reaches every GPU of this node from it."""
    env = os.environ if env is None else env
    tasks = 1
    if env.get("TF_CONFIG"):
        try:
            cluster = json.loads(env["TF_CONFIG"]).get("cluster", {})
            tasks = sum(len(addresses) for addresses in cluster.values())
        except (ValueError, AttributeError, TypeError):
            raise UsageError(
                "TF_CONFIG is set but is not the JSON TensorFlow expects",
                "unset TF_CONFIG: the TensorFlow smoke workload trains on one node",
            ) from None
    if world.size > 1 or tasks > 1:
        raise UsageError(
            f"the TensorFlow smoke workload runs as one process per node (MirroredStrategy over "
            f"this node's GPUs), but this is one of {max(world.size, tasks)} processes",
            "run it once per node without torchrun or TF_CONFIG; for several processes or nodes, "
            "use the torch workload (cudabox train torch --nproc-per-node N)",
        )


def pick_device(
    config: Config,
) -> tuple[common.DeviceKind, str, common.Precision, common.Sizing, list[str]]:
    """(device kind, device name, precision, sizing, the replicas' devices); must run before TF
    initializes its devices."""
    gpus = tf.config.list_physical_devices("GPU")
    if config.device == "cuda" and not gpus:
        found = (
            f"this TensorFlow {tf.__version__} is a CPU-only build"
            if not tf.test.is_built_with_cuda()
            else f"TensorFlow {tf.__version__} (CUDA build) sees no usable GPU"
        )
        raise common.no_gpu_error(found)
    kind: common.DeviceKind
    if config.device == "cpu" or not gpus:
        tf.config.set_visible_devices([], "GPU")
        kind, name, capability = "cpu", common.cpu_name(), (0, 0)
        devices = ["/cpu:0"]
    else:
        details = tf.config.experimental.get_device_details(gpus[0])
        kind, name = "cuda", str(details.get("device_name", gpus[0].name))
        capability = min(
            tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
            for gpu in gpus
        )
        devices = [f"/gpu:{index}" for index in range(len(gpus))]
        if len(gpus) > 1:
            name = f"{len(gpus)} x {name}"
    bf16_ok = kind == "cpu" or capability >= (8, 0)
    precision = common.choose_precision(config.precision, kind, bf16_ok, name)
    sizing = common.sizing_for(kind, (int(capability[0]), int(capability[1])))
    return kind, name, precision, sizing, devices


# --- training --------------------------------------------------------------------------------


def evaluate(model: Any, data: tuple[Any, Any]) -> tuple[float, float]:
    features, labels = data
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), 1024):
        x, y = features[start : start + 1024], labels[start : start + 1024]
        logits = model(x, training=False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        total_loss += float(tf.reduce_sum(losses))
        correct += int(
            tf.reduce_sum(tf.cast(tf.argmax(logits, axis=1, output_type=tf.int32) == y, tf.int32))
        )
    return total_loss / len(labels), correct / len(labels)


def train(config: Config, world: World, log: Log, stop: StopRequest) -> int:
    refuse_several_processes(world)
    kind, name, precision, sizing, devices = pick_device(config)
    if config.threads:  # before TF starts its thread pools (the strategy starts them)
        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
    strategy = tf.distribute.MirroredStrategy(devices)
    replicas = int(strategy.num_replicas_in_sync)
    config = common.sized(config, sizing, replicas)
    # The replicas of this process, seen as ranks in the metrics (one clock, one writer).
    world = World(size=replicas)
    if kind == "cpu":
        tf.config.experimental.enable_op_determinism()
        tf32 = False
    else:
        tf.config.experimental.enable_tensor_float_32_execution(True)
        tf32 = True
    policy = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}.get(precision, "float32")
    keras.mixed_precision.set_global_policy(policy)

    train_split, eval_split = make_task(config.seed, config.train_size)
    keras.utils.set_random_seed(common.stream_seed(config.seed, common.INIT) % 2**32)
    with strategy.scope():  # variables created here are mirrored on every replica
        model = build_model(config.width, config.depth)
        optimizer = keras.optimizers.AdamW(learning_rate=lr_schedule(config), weight_decay=0.01)
        if precision == "fp16":
            # Loss scaling only for fp16: bf16 has fp32's exponent range, gradients do not
            # underflow.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)  # create its state now, so a restore fills it
    per_example = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def gradients(x: Any, y: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            # Each replica's share of the global mean: the all-reduce sums the shares.
            loss = tf.nn.compute_average_loss(
                per_example(y, model(x, training=True)), global_batch_size=config.batch_size
            )
            scaled = optimizer.scale_loss(loss)  # identity unless fp16 loss scaling
        return loss, tape.gradient(scaled, model.trainable_variables)

    # With --compile, XLA fuses the forward and backward pass (jit_compile). The optimizer update
    # stays outside XLA: Keras sums the replicas' gradients there in a cross-replica merge_call,
    # which is why Keras itself turns XLA off under tf.distribute.
    replica_gradients = tf.function(gradients, jit_compile=config.compile)

    def replica_step(x: Any, y: Any) -> Any:
        loss, grads = replica_gradients(x, y)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    def distributed_step(batch: Any) -> Any:
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    train_step = tf.function(distributed_step)

    # Variables listed explicitly: Keras 3 models are not tracked by tf.train.Checkpoint.
    with tf.device("/cpu:0"):  # string variables have no GPU kernels
        step_var = tf.Variable(0, dtype=tf.int64)
        curve_var = tf.Variable("[]", dtype=tf.string)
        trajectory_var = tf.Variable(json.dumps(config.trajectory()), dtype=tf.string)
    checkpoint = tf.train.Checkpoint(
        weights=list(model.weights),
        optimizer=list(optimizer.variables),
        step=step_var,
        loss_curve=curve_var,
        trajectory=trajectory_var,
    )
    directory = config.out / CHECKPOINTS
    manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=2)
    start_step, loss_curve = 0, []
    if config.resume and manager.latest_checkpoint:
        saved = tf.train.load_variable(
            manager.latest_checkpoint, "trajectory/.ATTRIBUTES/VARIABLE_VALUE"
        )
        common.check_resume(config, json.loads(saved), directory)
        checkpoint.restore(manager.latest_checkpoint).assert_consumed()
        start_step = int(step_var.numpy())
        loss_curve = json.loads(curve_var.numpy().decode())
        log.progress(f"resuming from step {start_step} ({manager.latest_checkpoint})")
    elif config.resume:
        log.progress(f"no checkpoint in {directory}: starting from step 0")

    def save_checkpoint(step: int) -> None:
        step_var.assign(step)
        curve_var.assign(json.dumps(loss_curve))
        manager.save(checkpoint_number=step)

    dataset = train_dataset(train_split, config, start_step)
    per_replica = config.batch_size // replicas

    def shards(batch: tuple[Any, Any]) -> Any:
        """Each replica's contiguous slice of the global batch, as torch's ranks take theirs.

        Not strategy.experimental_distribute_dataset: its iterator doubled the CPU time of a
        small step here (measured), and CI trains on CPU many times.
        """
        x, y = batch

        def slice_for(context: Any) -> tuple[Any, Any]:
            start = context.replica_id_in_sync_group * per_replica
            return x[start : start + per_replica], y[start : start + per_replica]

        return strategy.experimental_distribute_values_from_function(slice_for)

    replicas_text = f", {replicas} replicas" if replicas > 1 else ""
    log.starting(
        name, f"{precision}{', XLA' if config.compile else ''}{replicas_text}", config, start_step
    )

    steps = common.Steps(
        config,
        world,
        log,
        stop,
        common.Solo(replicas),
        start_step=start_step,
        loss_curve=loss_curve,
        wait=float,  # reading the loss waits for the step (GPU work is asynchronous)
        value=float,
        save=save_checkpoint,
    )
    for batch in dataset:
        if steps.after_step(train_step(shards(batch))):
            break
    steps.finish()

    build = tf.sysconfig.get_build_info()
    if kind == "cuda":
        peak, source = tf.config.experimental.get_memory_info("GPU:0")["peak"], "tf_gpu_peak"
    else:
        peak, source = common.peak_rss_bytes(), "process_max_rss"
    facts = common.Facts(
        framework_version=tf.__version__,
        cuda_version=build.get("cuda_version"),
        cudnn_version=build.get("cudnn_version"),
        device=kind,
        device_name=name,
        precision=precision,
        compile=config.compile,
        tf32=tf32,
        import_s=IMPORT_SECONDS,
        peak_memory_bytes=int(peak),
        peak_memory_source=source,
        checkpoint=str(directory),
        backend="MirroredStrategy",
        extra={"keras_version": keras.__version__, "replicas": replicas},
    )
    return common.conclude(
        steps,
        facts,
        evaluate=lambda: evaluate(model, eval_split),
        digest=lambda: weights_sha256(model),
    )


def main(argv: list[str] | None = None) -> int:
    return common.run("tensorflow", train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
