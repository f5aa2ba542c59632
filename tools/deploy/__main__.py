"""python -m tools.deploy {render,apply,status,rollback,delete} - see k8s/README.md."""

import argparse
import sys

from rich.console import Console

from . import manifests


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.deploy", description=__doc__)
    parser.add_argument("--path", default=".", help="kustomization to render (default: the repo root)")
    parser.add_argument(
        "--context", help="kubeconfig context (default: current; in-cluster config as fallback)"
    )
    parser.add_argument("--namespace", default="modelserve")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("render", help="print the objects in apply order (no cluster)")
    apply = sub.add_parser("apply", help="server-side apply, wait for rollouts, report; roll back failures")
    apply.add_argument("--timeout", type=float, default=1800, help="seconds to wait for all rollouts")
    apply.add_argument("--no-rollback", action="store_true", help="leave a failed rollout as it is")
    apply.add_argument("--dry-run", action="store_true", help="server-side dry run: validate, change nothing")
    sub.add_parser("status", help="report pods, HPAs and service endpoints")
    rollback = sub.add_parser("rollback", help="restore a Deployment's previous pod template")
    rollback.add_argument("deployment")
    delete = sub.add_parser("delete", help="delete the rendered objects (keeps PVCs and the namespace)")
    delete.add_argument(
        "--purge", action="store_true", help="also delete the model-cache PVCs and the namespace"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console = Console()
    objects = manifests.render(args.path) if args.command in ("render", "apply", "delete") else []
    if args.command == "render":
        for obj in manifests.apply_order(objects):
            console.print(manifests.key(obj))
        return 0

    from .cluster import Cluster, NoClusterError  # the kubernetes client is only needed past this point

    try:
        cluster = Cluster.connect(args.context, console)
    except NoClusterError as error:
        print(f"python -m tools.deploy: {error}", file=sys.stderr)
        return 1
    if args.command == "apply":
        generations = cluster.apply(objects, dry_run=args.dry_run)
        if args.dry_run:
            return 0
        failures = cluster.wait(args.namespace, generations, args.timeout)
        for message in failures.values():
            console.print(f"[red]{message}")
        if failures and not args.no_rollback:
            for name in failures:
                cluster.rollback(args.namespace, name)
            cluster.wait(args.namespace, {n: 0 for n in failures}, args.timeout)
        cluster.report(args.namespace)
        return 1 if failures else 0
    if args.command == "status":
        cluster.report(args.namespace)
        return 0
    if args.command == "rollback":
        return 0 if cluster.rollback(args.namespace, args.deployment) else 1
    if args.command == "delete":
        keep = set() if args.purge else {"PersistentVolumeClaim", "Namespace"}
        cluster.delete(objects, keep)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
