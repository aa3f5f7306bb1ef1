"""The shop's two endpoints and the admin (with runledger's read-only pages)."""

from django.contrib import admin
from django.urls import path
from shop import views

urlpatterns = [
    path("orders/", views.place_order, name="place-order"),
    path("orders/<int:pk>/", views.order_detail, name="order-detail"),
    path("admin/", admin.site.urls),
]
