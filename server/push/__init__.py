"""Web Push: subscriptions, VAPID keys, encrypted sending, preferences and quiet hours."""
