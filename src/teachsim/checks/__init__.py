"""Conformance checks for plugins (protocols, tasks, query strategies), shipped with the
package: each runs the real engine on a small case and returns problems in plain words."""
