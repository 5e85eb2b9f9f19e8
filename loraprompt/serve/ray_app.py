"""`loraprompt serve --ray`: the same API as a Ray Serve application (imported only with --ray).

    HTTP -> ApiIngress (FastAPI: /sdapi/v1/*, /predictions)  --handle-->  ModelReplica x N

Each `ModelReplica` loads the base model once. A request's images are grouped by LoRA set, and
each group goes to the replicas through Ray Serve's model multiplexing with the set's key (its
canonical tags) as the multiplexed model id: Ray routes a set to a replica that already has it,
and each replica keeps at most `sets_per_replica` sets loaded (LRU; a loaded set is its adapters
read and held in memory, and the last set used stays patched into the weights, so a repeated set
costs no file read and no patching). Groups of one batch run on several replicas at once.

On a cluster: every node needs the same LoRA folders and data dir at the same paths (a shared
file system), because the ingress resolves names and downloads files that the replicas open.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
import time
from typing import Any

from ray import serve

from loraprompt.serve.jobs import ImageOutput, ImageTask, Job, lora_set_key, run_job
from loraprompt.serve.service import Limits, ModelInfo

log = logging.getLogger("loraprompt.serve")
NO_LORA = "<none>"  # the multiplexed model id of the empty set (Ray treats "" as no id)


class LoadedSet:
    """A LoRA set held by a replica: its adapters, read once (what multiplexing caches)."""

    def __init__(self, key: str, adapters: list[Any]) -> None:
        self.key = key
        self.adapters = adapters


class ModelReplica:
    """One copy of the base model with its queue; `generate` runs a group of images that share
    one LoRA set (the multiplexed model id)."""

    def __init__(self, config: Any) -> None:
        import torch

        from loraprompt.serve.loras import PinnedLibrary

        if os.environ.get("LORAPROMPT_TORCH_THREADS"):
            torch.set_num_threads(int(os.environ["LORAPROMPT_TORCH_THREADS"]))
        self.config = config
        self.engine = config.load_engine()
        self.library = PinnedLibrary(self.engine.library, config.download_dir)
        self.engine.library = self.library
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.loads: list[str] = []
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        m = self.engine.model
        return {"model": ModelInfo.of(m, self.engine.samplers), "lora_dirs": list(self.config.lora_dirs), "replica": self.replica_id}

    async def lora_set(self, model_id: str) -> LoadedSet:
        """Read the adapters of a set (the multiplexed load; Ray keeps an LRU of these)."""
        key = "" if model_id == NO_LORA else model_id
        self.loads.append(model_id)
        return LoadedSet(key, await asyncio.to_thread(self._read_set, key))

    def _read_set(self, key: str) -> list[Any]:
        from loraprompt.integrations.diffusers import DEFAULT_CACHE
        from loraprompt.syntax import parse

        adapters = []
        for activation in parse(key).loras:
            found = self.library.resolve(activation.name)
            if found.entry is not None:
                try:
                    adapters.append(DEFAULT_CACHE.get(found.entry.path))
                except Exception:  # reported when the image is made
                    log.warning("replica %s: cannot read %s", self.replica_id, found.entry.path)
        return adapters

    async def generate(self, tasks: list[ImageTask], job_id: str, keep: bool = False,
                       keep_incomplete: bool | None = None) -> dict[str, Any]:
        """Make the images of one LoRA set, saved to this replica's outputs with `keep` (A1111's
        `save_images`; `keep_incomplete`: see `Job`); returns outputs, status, error and logs."""
        for task in tasks:
            self.library.add_pins(task.pins)
        model_id = serve.get_multiplexed_model_id()
        loaded_before = len(self.loads)
        held = await self.lora_set(model_id) if model_id else None
        fresh = len(self.loads) > loaded_before
        job = Job(tasks, keep=keep, keep_incomplete=keep_incomplete, job_id=job_id)
        job.log(f"replica {self.replica_id}: LoRA set {held.key if held and held.key else '(none)'!r} "
                f"{'loaded' if fresh else 'already loaded'}")
        try:
            await asyncio.to_thread(self._run, job)
        except asyncio.CancelledError:  # the caller cancelled: stop the job; run_job restores the model
            job.cancel()
            self.engine.interrupt()
            raise
        for output in job.images:
            output.replica = self.replica_id
        return {"outputs": job.outputs, "status": job.status, "error": job.error, "logs": job.logs,
                "warnings": job.warnings, "replica": self.replica_id, "loaded": fresh, "started_at": job.started_at}

    def _run(self, job: Job) -> None:
        with self._lock:  # one queue per model: this replica's images one at a time
            run_job(self.engine, job)

    def stats(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "loads": list(self.loads)}


class RayBackend:
    """Runs a job's LoRA-set groups on the model replicas: with multiplexed routing by set
    (`routing="multiplexed"`) or Ray Serve's default routing (`"random"`, for comparison).

    A job's calls go to Ray Serve as soon as it is submitted (Ray queues them at the replicas,
    each of which runs one group at a time). The unfinished jobs beyond one per replica are the
    ones waiting: they stay `queued` (a prediction shows `starting`) and are what `pending`
    counts (and `--max-queue` limits), as the local queue counts the jobs behind its running one;
    the oldest waiting job is `running` when a job ends. Ray does not say which call a replica
    took first, so with multiplexed routing a later job can in fact run before an earlier one."""

    def __init__(self, handle: Any, routing: str = "multiplexed", replicas: int = 1) -> None:
        self.handle = handle
        self.routing = routing
        self.replicas = max(1, int(replicas))
        self._jobs: list[Job] = []
        self._responses: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    @property
    def current(self) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs if j.status == "running"), None)

    @property
    def pending(self) -> int:
        """Unfinished jobs beyond one per replica: the ones waiting for a replica. A job whose images
        use several LoRA sets sends one call per set and can hold several replicas at once, so
        this counts low then, and `--max-queue` lets in a few more jobs than it says."""
        with self._lock:
            return max(0, len(self._jobs) - self.replicas)

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._jobs.append(job)
            self._promote()
        threading.Thread(target=self._drive, args=(job,), daemon=True, name=f"ray-job-{job.id[:8]}").start()
        return job

    def _promote(self) -> None:
        """Under `_lock`: the oldest jobs, one per replica, are `running`."""
        for job in self._jobs[: self.replicas]:
            if job.status == "queued":
                job.start()

    def cancel(self, job: Job) -> None:
        job.cancel()
        for response in self._responses.get(job.id, []):
            response.cancel()

    def interrupt(self) -> None:
        job = self.current
        if job is not None:
            job.interrupt()
            for response in self._responses.get(job.id, []):
                response.cancel()

    def _drive(self, job: Job) -> None:
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(job.tasks):
            groups.setdefault(lora_set_key(task.request.prompt), []).append(i)
        calls = []
        for key, members in groups.items():
            handle = self.handle
            if self.routing == "multiplexed":
                handle = handle.options(multiplexed_model_id=key or NO_LORA)
            calls.append((members, handle.generate.remote([job.tasks[i] for i in members], job.id, job.keep, job.keep_incomplete)))
        self._responses[job.id] = [r for _, r in calls]
        errors: list[str] = []
        try:
            for members, response in calls:
                try:
                    result = response.result()
                except Exception as exc:  # a cancelled call, or a replica that died
                    if not job.stop_requested:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    if job.status == "queued":  # a replica took it before a job ahead of it ended
                        job.start()
                        job.started_at = result.get("started_at") or job.started_at
                job.logs += result["logs"]
                job.warnings += result["warnings"]
                if result["status"] == "failed":
                    errors.append(result["error"] or "failed")
                for i, output in zip(members, result["outputs"]):
                    if output is not None:
                        job.outputs[i] = output
                        job.image_no += 1
        finally:
            self._responses.pop(job.id, None)
            with self._lock:
                self._jobs.remove(job)
                self._promote()
        if errors:
            job.finish("failed", "; ".join(errors))
        else:
            job.finish("canceled" if job.cancel_requested else "succeeded")


class ApiIngress:
    """The FastAPI app of `loraprompt serve`, on a `Service` whose backend is the replicas."""

    async def __init__(self, model: Any, options: dict[str, Any]) -> None:  # type: ignore[misc]  # Ray awaits it
        from loraprompt.library import Library
        from loraprompt.serve.service import Service

        described = await model.describe.remote()
        self.options = options
        config = options["config"]
        library = Library(described["lora_dirs"], persist=False)  # the replicas own the on-disk cache
        self.service = Service(model=described["model"], library=library,
                               backend=RayBackend(model, options.get("routing", "multiplexed"), options.get("replicas", 1)),
                               download_dir=config.download_dir, limits=options.get("limits") or Limits(),
                               max_download_mb=options.get("max_download_mb", 1024),
                               download_timeout_s=options.get("download_timeout_s", 60))
        self.service.options["save_incomplete_images"] = config.save_incomplete  # the replicas' engines start so

    def __serve_build_asgi_app__(self) -> Any:
        from loraprompt.serve.app import build_app

        o = self.options
        return build_app(self.service, api_auth=o.get("api_auth"), cors_origins=o.get("cors_origins"),
                         cors_origin_regex=o.get("cors_origin_regex"))


def build_application(config: Any, *, replicas: int = 2, sets_per_replica: int = 4, gpus_per_replica: float = 0.0,
                      cpus_per_replica: float = 1.0, routing: str = "multiplexed", env: dict[str, str] | None = None,
                      **options: Any) -> Any:
    """The Ray Serve application (bind it with `serve.run`)."""
    replica_cls = type("ModelReplica", (ModelReplica,), {
        "lora_set": serve.multiplexed(max_num_models_per_replica=sets_per_replica)(ModelReplica.lora_set),
    })
    actor_options: dict[str, Any] = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    if env:
        actor_options["runtime_env"] = {"env_vars": env}
    model: Any = serve.deployment(replica_cls, name="ModelReplica", num_replicas=replicas,
                             ray_actor_options=actor_options, max_ongoing_requests=8)
    ingress: Any = serve.deployment(serve.ingress()(ApiIngress), name="ApiIngress",
                               ray_actor_options={"num_cpus": 0, **({"runtime_env": {"env_vars": env}} if env else {})})
    return ingress.bind(model.bind(config), {"config": config, "routing": routing, "replicas": replicas, **options})


def run_ray(args: argparse.Namespace, config: Any, limits: Limits, cors: list[str]) -> int:
    """`loraprompt serve --ray`: start (or join) Ray, deploy, serve until interrupted."""
    import ray

    ray.init(address=args.ray_address or os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_application(config, replicas=args.replicas, sets_per_replica=args.sets_per_replica,
                            gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica, limits=limits, api_auth=args.api_auth,
                            cors_origins=cors, cors_origin_regex=args.cors_allow_origins_regex,
                            max_download_mb=args.max_download_mb, download_timeout_s=args.download_timeout)
    serve.run(app, name="loraprompt", route_prefix="/")
    print(f"loraprompt serve --ray: {args.replicas} replicas; http://{args.host}:{args.port}/sdapi/v1/txt2img and"
          " /predictions", flush=True)
    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a service manager's stop shuts Serve and Ray down too
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


__all__ = ["ApiIngress", "ImageOutput", "ModelReplica", "RayBackend", "build_application", "run_ray"]
