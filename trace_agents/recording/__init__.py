"""Recordings of a real policy's rollout trees: the recorder and the file format (see
docs/allocation.md, "Recording a real policy")."""

from trace_agents.recording.format import Meta, Outcome, Prefix, PromptRecord, Recording, load_recording
from trace_agents.recording.recorder import Plan, make_meta, record

__all__ = ["Meta", "Outcome", "Plan", "Prefix", "PromptRecord", "Recording", "load_recording",
           "make_meta", "record"]
