"""Reusable training core: optimizer, train state, step, checkpoints, metrics and loop.

Jobs use `trainer.Trainer` (state, compiled step, checkpointer, `fit`); underneath it, the
pieces wire together like this:

    mesh = sharding.make_mesh(mesh_config)
    tx = optimizer.make_optimizer(optimizer_config)
    state = train_state.init_train_state(init_fn, tx, rng, mesh,
                                         sharding.param_shardings(model_config, mesh))
    step = step_lib.jit_train_step(step_lib.make_train_step(loss_fn, tx, "bfloat16"),
                                   train_state.state_shardings_of(state),
                                   sharding.batch_shardings(mesh, example_batch),
                                   sharding.replicated(mesh))
    with checkpointing.Checkpointer(checkpoint_config, run_config) as ckpt:
      result = loop.train(loop_config, state, step, batches, ckpt, mesh=mesh)
"""
