"""The elastic fleet: a controller that keeps each server's replica count where its demand and policy say.

policy (pure: demand history -> desired replicas) <- demand (what the router reports) ; controller (the reconcile
loop: actual from the manifest and squeue, submit through the launcher, drain through stop) ; state (its journal)."""
