"""The bundled demo: a procedural shapes dataset and the end-to-end demo run."""
