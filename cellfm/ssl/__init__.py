"""The DINOv2 self-supervised and distillation engine: heads, losses, schedules, student/teacher."""
