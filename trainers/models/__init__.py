"""Networks of the cGAN family as building blocks that never read a `TrainConfig`.

Every module here takes keyword arguments and layer factories: `layers` (layer factory, norms, init,
self-attention), `conditioning` (how labels enter G and D), `generators` and `discriminators` (the bodies),
`archs` (what each `arch` name means). `trainers.build` assembles them from a config; importing this
package imports none of its modules, so the config can read a registry without building networks.
"""
