"""UNet feature pyramids by forward hooks: grouping by stride, and Eq. 4's simulated last step."""

import torch


def test_pyramid_groups_block_outputs_by_stride_and_eq4_is_deterministic(tiny_model):
    from engine.heads.boxes.features import PyramidCapture, simulated_last_step
    from engine.models import load_pipeline

    pipe = load_pipeline(tiny_model, device="cpu")
    capture = PyramidCapture(pipe.unet, pipe.vae_scale_factor)
    pipe("a circle", num_inference_steps=2, guidance_scale=7.5, output_type="np")
    pyramid = capture.pyramid(rows=slice(-1, None))  # the conditional half of the CFG pair
    # tiny UNet (16, 32 channels, latent 8, VAE factor 4): 8x8 = up block 0 (32) + up block 1 (16);
    # 4x4 = down block 0 after its downsampler (16) + down block 1 (32) + mid (32)
    assert {s: tuple(t.shape) for s, t in pyramid.items()} == {4: (1, 48, 8, 8), 8: (1, 80, 4, 4)}

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    first = simulated_last_step(pipe, capture, images, generator=torch.Generator().manual_seed(3))
    again = simulated_last_step(pipe, capture, images, generator=torch.Generator().manual_seed(3))
    assert first.keys() == {4, 8} and first[4].shape == (2, 48, 8, 8)
    assert all(torch.equal(first[s], again[s]) for s in first)
    capture.remove()
    pipe.unet(torch.zeros(1, 4, 8, 8), 1, encoder_hidden_states=torch.zeros(1, 32, 128))
    assert torch.equal(capture.pyramid()[4], again[4])  # removed hooks record nothing new


def test_eq4_noises_to_t1_of_the_training_schedule_whatever_the_sampler(tiny_model):
    """DPM-Solver's add_noise looks t up among its inference timesteps; Eq. 4 must not."""
    from engine.heads.boxes.features import PyramidCapture, simulated_last_step
    from engine.models import load_pipeline

    pipe = load_pipeline(tiny_model, device="cpu")  # DPM-Solver++
    pipe.scheduler.set_timesteps(20)
    seen = {}
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.update(z1=args[0]))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    simulated_last_step(pipe, PyramidCapture(pipe.unet, pipe.vae_scale_factor), images, torch.Generator().manual_seed(0))
    z0 = pipe.vae.encode(images.float() / 127.5 - 1).latent_dist.sample(torch.Generator().manual_seed(0))
    z0 = z0 * pipe.vae.config.scaling_factor
    assert (seen["z1"] - z0).std() < 0.1  # unit noise times sqrt(1 - alpha_bar_1), about 0.03; not about 1
