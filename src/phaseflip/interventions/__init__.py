"""The interventions compared: LoRA training, activation steering, in-context examples."""
